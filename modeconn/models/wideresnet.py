"""Wide ResNet (Zagoruyko & Komodakis 2016) as in the paper's code (models/wide_resnet.py); the paper uses
WRN-28-10."""

from __future__ import annotations

import torch
from torch import nn

from .initialisation import init_weights
from .registry import register, require


class WideBasic(nn.Module):
    """Pre-activation wide block: BN-ReLU-conv3x3-dropout-BN-ReLU-conv3x3 plus shortcut.

    As in the paper's code (models/wide_resnet.py, from meliketoy/wide-resnet.pytorch):
    convs have biases, and the stride sits on the second conv.
    """

    def __init__(self, in_planes: int, planes: int, dropout: float, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, padding=1, bias=True)
        self.dropout = nn.Dropout(dropout)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=True)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()  # identity
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=True),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.conv1(self.relu(self.bn1(x))))  # (B, planes, H, W)
        out = self.conv2(self.relu(self.bn2(out)))  # (B, planes, H / stride, W / stride)
        return out + self.shortcut(x)


class WideResNet(nn.Module):
    """WRN-depth-k: conv3x3(16), three stages of n = (depth - 4) / 6 wide blocks at
    16k/32k/64k planes (strides 1/2/2), BN-ReLU, global average pool, Linear.

    Parameter names match the paper's code. Departures: the final BN uses
    PyTorch's default momentum (the code's ``momentum=0.9`` only changes how
    running statistics are averaged, which the curve code recomputes anyway),
    ``F.avg_pool2d(8)`` is ``AdaptiveAvgPool2d(1)`` so 28x28 inputs work, and
    convs get the He fan-out init like the other models (the code leaves
    PyTorch's default).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        input_size: int = 32,
        depth: int = 28,
        widen_factor: int = 10,
        dropout: float = 0.0,
    ):
        super().__init__()
        n = (depth - 4) // 6
        stages = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.in_planes = stages[0]
        self.conv1 = nn.Conv2d(in_channels, stages[0], kernel_size=3, padding=1, bias=True)
        self.layer1 = self._wide_layer(stages[1], n, dropout, stride=1)
        self.layer2 = self._wide_layer(stages[2], n, dropout, stride=2)
        self.layer3 = self._wide_layer(stages[3], n, dropout, stride=2)
        self.bn1 = nn.BatchNorm2d(stages[3])
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(stages[3], num_classes)
        init_weights(self)

    def _wide_layer(self, planes: int, blocks: int, dropout: float, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(WideBasic(self.in_planes, planes, dropout, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # (B, 16, H, W)
        x = self.layer1(x)  # (B, 16k, H, W)
        x = self.layer2(x)  # (B, 32k, H / 2, W / 2)
        x = self.layer3(x)  # (B, 64k, H / 4, W / 4)
        x = self.relu(self.bn1(x))
        x = self.flatten(self.avgpool(x))  # (B, 64k)
        return self.linear(x)  # (B, num_classes)


@register("wideresnet")
def wideresnet(
    num_classes: int,
    in_channels: int = 3,
    input_size: int = 32,
    depth: int = 28,
    widen_factor: int = 10,
    dropout: float = 0.0,
) -> WideResNet:
    """Wide ResNet (Zagoruyko & Komodakis 2016) as in the paper's code
    (models/wide_resnet.py); the paper uses WRN-28-10 without dropout."""
    require(
        depth >= 10 and (depth - 4) % 6 == 0,
        f"model 'wideresnet': invalid depth {depth}: depth must be 6n + 4 with n >= 1 (e.g. 10, 16, 22, 28, 40)",
    )
    require(widen_factor >= 1, f"model 'wideresnet': widen_factor must be >= 1, got {widen_factor}")
    require(0.0 <= dropout < 1.0, f"model 'wideresnet': dropout must be in [0, 1), got {dropout}")
    return WideResNet(num_classes, in_channels, input_size, depth, widen_factor, dropout)
