"""ConvFC, the paper's small convolutional network (Garipov et al. 2018, Section 5; models/convfc.py of its code)."""

from __future__ import annotations

import torch
from torch import nn

from .initialisation import init_weights
from .registry import register, require


class ConvFC(nn.Module):
    """Three 5x5 conv layers with max pooling, then three fully connected layers.

    With ``batch_norm`` a BatchNorm2d follows each conv and a BatchNorm1d each
    hidden Linear, before the ReLU (the paper's code has no such variant).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        input_size: int = 32,
        width: int = 32,
        fc_width: int = 1000,
        batch_norm: bool = False,
    ):
        super().__init__()
        channels = [in_channels, width, 2 * width, 4 * width]
        size = input_size
        conv_layers: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            conv_layers.append(nn.Conv2d(c_in, c_out, kernel_size=5, padding=2))
            if batch_norm:
                conv_layers.append(nn.BatchNorm2d(c_out))
            # Pool, then ReLU: the same function and the same gradients as the paper's ReLU-then-pool (max and
            # ReLU commute; where a window's max is ≤ 0 both give 0), with the ReLU on a 4.6x smaller tensor:
            # a training step 4-7% faster on this CPU (docs/speed.md), loss and gradients equal bit for bit.
            conv_layers += [nn.MaxPool2d(kernel_size=3, stride=2), nn.ReLU()]
            require(
                size >= 3,
                f"model 'convfc' needs input_size >= 15 (three 3x3 max pools with stride 2), got {input_size}",
            )
            size = (size - 3) // 2 + 1  # 32 -> 15 -> 7 -> 3, 28 -> 13 -> 6 -> 2
        # Same layer indices as the paper code's conv_part / fc_part when batch_norm=False.
        self.conv_part = nn.Sequential(*conv_layers)
        self.flatten = nn.Flatten()
        flat = channels[-1] * size * size  # 1152 for 3x32x32 with width 32
        fc_layers: list[nn.Module] = []
        for f_in, f_out in ((flat, fc_width), (fc_width, fc_width)):
            fc_layers.append(nn.Linear(f_in, f_out))
            if batch_norm:
                fc_layers.append(nn.BatchNorm1d(f_out))
            fc_layers.append(nn.ReLU())
        fc_layers.append(nn.Linear(fc_width, num_classes))
        self.fc_part = nn.Sequential(*fc_layers)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_part(x)  # (B, 4w, s, s)
        x = self.flatten(x)  # (B, 4w * s * s)
        return self.fc_part(x)  # (B, num_classes)


@register("convfc")
def convfc(
    num_classes: int,
    in_channels: int = 3,
    input_size: int = 32,
    width: int = 32,
    fc_width: int = 1000,
    batch_norm: bool = False,
) -> ConvFC:
    """ConvFC of the paper (Section 5, "ConvFC"; models/convfc.py of its code):
    conv(w)-conv(2w)-conv(4w), 5x5 kernels, each followed by ReLU and a 3x3/2 max
    pool (run as pool then ReLU, the same function), then
    Linear(fc_width)-Linear(fc_width)-Linear(num_classes)."""
    require(width >= 1, f"model 'convfc': width must be >= 1, got {width}")
    require(fc_width >= 1, f"model 'convfc': fc_width must be >= 1, got {fc_width}")
    return ConvFC(num_classes, in_channels, input_size, width, fc_width, batch_norm)
