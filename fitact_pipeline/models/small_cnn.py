"""A small CNN for quick runs: works on 8x8 digits and 32x32 images alike.

Global average pooling before the head makes the parameter count independent of the input size
(about 28k parameters at width 1 for 1-channel digits).
"""

from torch import nn

from . import register_model, scaled


def conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@register_model("small_cnn")
def small_cnn(num_classes: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    c1, c2 = scaled(32, width), scaled(64, width)
    features = nn.Sequential(
        *conv_bn_relu(in_channels, c1),
        *conv_bn_relu(c1, c1),
        nn.MaxPool2d(2),
        *conv_bn_relu(c1, c2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return nn.Sequential(features, nn.Linear(c2, num_classes))
