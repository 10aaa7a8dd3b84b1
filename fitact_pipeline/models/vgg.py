"""VGG16 with BatchNorm for 32x32 inputs: 13 convolutions and a single linear head.

This is the usual CIFAR VGG16-BN (about 14.7 M parameters at width 1 for 10 classes): after five
pools a 32x32 input is 1x1x512, so the ImageNet 4096-unit classifier is replaced by one linear layer.
"""

from torch import nn

from . import register_model, scaled

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


@register_model("vgg16")
def vgg16(num_classes: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    layers: list[nn.Module] = []
    cin = in_channels
    for item in VGG16:
        if item == "M":
            # ceil_mode keeps 1x1 maps alive, so small inputs (8x8 digits) also build and run.
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
            continue
        cout = scaled(item, width)
        layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(nn.Sequential(*layers), nn.Linear(cin, num_classes))
