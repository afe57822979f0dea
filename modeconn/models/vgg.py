"""VGG-16 and VGG-19, with and without batch norm (Simonyan & Zisserman 2015), as in the paper's code
(models/vgg.py), for small images."""

from __future__ import annotations

import math

import torch
from torch import nn

from .initialisation import init_weights
from .registry import register, require

CONFIGS = {
    16: [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    19: [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


class VGG(nn.Module):
    """VGG (Simonyan & Zisserman 2015) for small images, with the paper code's
    512-512 classifier.

    Departures from the paper's code: (1) with ``batch_norm`` each conv is
    followed by BatchNorm2d then ReLU. The paper code's VGG16BN/VGG19BN zip a
    list of conv and BN layers with a shorter list of ReLUs, which silently drops
    half of the layers (a known bug of dnn-mode-connectivity); we build the intended,
    standard network. (2) Max pools use ``ceil_mode=True`` so 28x28 inputs reach
    1x1 (28 -> 14 -> 7 -> 4 -> 2 -> 1); for 32x32 this changes nothing.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        input_size: int = 32,
        depth: int = 16,
        batch_norm: bool = False,
        dropout: float = 0.5,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, size = in_channels, input_size
        for stage in CONFIGS[depth]:
            for c_out in stage:
                layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(c_out))
                layers.append(nn.ReLU())
                c_in = c_out
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            size = math.ceil(size / 2)
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        flat = c_in * size * size  # 512 for 32x32 and 28x28 inputs
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(flat, 512),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 512, s, s), s = 1 for 32x32 and 28x28
        x = self.flatten(x)  # (B, 512 * s * s)
        return self.classifier(x)  # (B, num_classes)


def _vgg(
    name: str, num_classes: int, in_channels: int, input_size: int, depth: int, batch_norm: bool, dropout: float
) -> VGG:
    require(0.0 <= dropout < 1.0, f"model {name!r}: dropout must be in [0, 1), got {dropout}")
    return VGG(num_classes, in_channels, input_size, depth, batch_norm, dropout)


@register("vgg16")
def vgg16(num_classes: int, in_channels: int = 3, input_size: int = 32, dropout: float = 0.5) -> VGG:
    """VGG-16 without batch norm (paper: VGG16; code: models/vgg.py)."""
    return _vgg("vgg16", num_classes, in_channels, input_size, 16, False, dropout)


@register("vgg16_bn")
def vgg16_bn(num_classes: int, in_channels: int = 3, input_size: int = 32, dropout: float = 0.5) -> VGG:
    """VGG-16 with batch norm after each conv (paper code: VGG16BN, see :class:`VGG`)."""
    return _vgg("vgg16_bn", num_classes, in_channels, input_size, 16, True, dropout)


@register("vgg19")
def vgg19(num_classes: int, in_channels: int = 3, input_size: int = 32, dropout: float = 0.5) -> VGG:
    """VGG-19 without batch norm (paper code: VGG19)."""
    return _vgg("vgg19", num_classes, in_channels, input_size, 19, False, dropout)


@register("vgg19_bn")
def vgg19_bn(num_classes: int, in_channels: int = 3, input_size: int = 32, dropout: float = 0.5) -> VGG:
    """VGG-19 with batch norm after each conv (paper code: VGG19BN, see :class:`VGG`)."""
    return _vgg("vgg19_bn", num_classes, in_channels, input_size, 19, True, dropout)
