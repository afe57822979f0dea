"""Pre-activation ResNet (He et al. 2016, "Identity Mappings in Deep Residual Networks") for CIFAR, as in
the paper's code (models/preresnet.py); the paper uses PreResNet-110 and -164."""

from __future__ import annotations

import torch
from torch import nn

from modeconn.errors import ConfigError

from .initialisation import init_weights
from .registry import register, require


class PreActBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the shortcut (He et al. 2016b)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))  # (B, planes, H / stride, W / stride)
        out = self.conv2(self.relu(self.bn2(out)))
        residual = x if self.downsample is None else self.downsample(x)
        return out + residual


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1 (x4 channels) plus the shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))  # (B, planes, H, W)
        out = self.conv2(self.relu(self.bn2(out)))  # (B, planes, H / stride, W / stride)
        out = self.conv3(self.relu(self.bn3(out)))  # (B, 4 * planes, H / stride, W / stride)
        residual = x if self.downsample is None else self.downsample(x)
        return out + residual


class PreResNet(nn.Module):
    """Pre-activation ResNet for CIFAR: conv3x3(16), three stages of ``n`` blocks
    at 16/32/64 planes (strides 1/2/2), BN-ReLU, global average pool, Linear.

    Parameter names match the paper's code (models/preresnet.py), so its
    checkpoints load with ``load_state_dict``. Its ``AvgPool2d(8)`` is
    ``AdaptiveAvgPool2d(1)`` here (the same on 32x32, and it also works on 28x28).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        input_size: int = 32,
        block: type[PreActBasicBlock] | type[PreActBottleneck] = PreActBasicBlock,
        n: int = 18,
    ):
        super().__init__()
        self.inplanes = 16
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False)
        self.layer1 = self._make_layer(block, 16, n, stride=1)
        self.layer2 = self._make_layer(block, 32, n, stride=2)
        self.layer3 = self._make_layer(block, 64, n, stride=2)
        self.bn = nn.BatchNorm2d(64 * block.expansion)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64 * block.expansion, num_classes)
        init_weights(self)

    def _make_layer(
        self, block: type[PreActBasicBlock] | type[PreActBottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # (B, 16, H, W)
        x = self.layer1(x)  # (B, 16 e, H, W), e = block expansion
        x = self.layer2(x)  # (B, 32 e, H / 2, W / 2)
        x = self.layer3(x)  # (B, 64 e, H / 4, W / 4)
        x = self.relu(self.bn(x))
        x = self.flatten(self.avgpool(x))  # (B, 64 e)
        return self.fc(x)  # (B, num_classes)


@register("preresnet")
def preresnet(
    num_classes: int, in_channels: int = 3, input_size: int = 32, depth: int = 110, block: str = "auto"
) -> PreResNet:
    """Pre-activation ResNet (He et al. 2016, "Identity Mappings in Deep Residual
    Networks") as in the paper's code (models/preresnet.py, from
    bearpaw/pytorch-classification); the paper uses depths 110 and 164.

    ``block="auto"`` is the paper code's rule: depth < 44 uses basic blocks
    (depth = 6n + 2: 20, 32, 38), depth >= 44 uses bottleneck blocks (depth =
    9n + 2: 47, 56, 110, 164). So the paper's PreResNet-110 is a *bottleneck*
    network (12 blocks per stage, ~1.15M parameters), not He et al.'s basic-block
    ResNet-110 (~1.7M); pass ``block="basic"`` for the latter. ``"basic"`` and
    ``"bottleneck"`` force a block type at any valid depth.
    """
    basic_rule = "basic blocks need depth = 6n + 2 (e.g. 20, 32, 56, 110)"
    bottleneck_rule = "bottleneck blocks need depth = 9n + 2 (e.g. 29, 56, 110, 164)"
    if block == "auto":
        block = "bottleneck" if depth >= 44 else "basic"
        hint = (
            "; with block='auto' (the paper code's rule) depth < 44 uses basic blocks "
            "and depth >= 44 uses bottleneck blocks"
        )
    elif block in ("basic", "bottleneck"):
        hint = ""
    else:
        raise ConfigError(f"model 'preresnet': block must be 'auto', 'basic' or 'bottleneck', got {block!r}")
    if block == "basic":
        require(depth >= 8 and (depth - 2) % 6 == 0, f"model 'preresnet': invalid depth {depth}: {basic_rule}{hint}")
        return PreResNet(num_classes, in_channels, input_size, PreActBasicBlock, (depth - 2) // 6)
    require(depth >= 11 and (depth - 2) % 9 == 0, f"model 'preresnet': invalid depth {depth}: {bottleneck_rule}{hint}")
    return PreResNet(num_classes, in_channels, input_size, PreActBottleneck, (depth - 2) // 9)
