"""AlexNet adapted to 32x32 inputs (CIFAR-style).

The ImageNet AlexNet's 11x11 stride-4 stem would reduce a 32x32 image to 8x8 at once, so this
variant keeps AlexNet's five convolutions (64-192-384-256-256 channels), its three max-pools and its
three-layer classifier with dropout, but uses 3x3 convolutions and smaller fully connected layers
(1024 hidden units instead of 4096). BatchNorm after each convolution makes it trainable from scratch
with the plain SGD recipe at reduced widths; it is folded away before fault injection.
At width 1 with 10 classes it has 4,362,186 parameters (asserted in tests/test_models.py).
"""

from torch import nn

from . import register_model, scaled


@register_model("alexnet")
def alexnet(num_classes: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    c = [scaled(n, width) for n in (64, 192, 384, 256, 256)]
    hidden = scaled(1024, width)
    layers: list[nn.Module] = []
    cin = in_channels
    for i, cout in enumerate(c):
        layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        if i in (0, 1, 4):
            # ceil_mode keeps a 1x1 map at 1x1, so 8x8 inputs survive the three pools.
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        cin = cout
    # A fixed 2x2 map feeds the classifier whatever the input size (no-op-like for 32x32 -> 4x4 -> 2x2).
    layers.append(nn.AdaptiveAvgPool2d(2))
    classifier = nn.Sequential(
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(c[-1] * 4, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(hidden, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes),
    )
    return nn.Sequential(nn.Sequential(*layers), classifier)
