"""MLP: not one of the paper's models; a small, fast fully connected network for quick runs and tests."""

from __future__ import annotations

import torch
from torch import nn

from .initialisation import init_weights
from .registry import register, require


class MLP(nn.Module):
    """Flatten, ``depth`` hidden Linear(+BatchNorm1d)+ReLU layers, output Linear."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        input_size: int = 32,
        width: int = 256,
        depth: int = 2,
        batch_norm: bool = False,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        f_in = in_channels * input_size * input_size
        for _ in range(depth):
            layers.append(nn.Linear(f_in, width))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU())
            f_in = width
        layers.append(nn.Linear(f_in, num_classes))
        self.layers = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)  # (B, C, H, W) -> (B, num_classes)


@register("mlp")
def mlp(
    num_classes: int,
    in_channels: int = 3,
    input_size: int = 32,
    width: int = 256,
    depth: int = 2,
    batch_norm: bool = False,
) -> MLP:
    """A fully connected ReLU network with ``depth`` hidden layers of ``width``
    units. Not one of the paper's models: a small, fast model for quick runs."""
    require(width >= 1, f"model 'mlp': width must be >= 1, got {width}")
    require(depth >= 0, f"model 'mlp': depth must be >= 0, got {depth}")
    return MLP(num_classes, in_channels, input_size, width, depth, batch_norm)
