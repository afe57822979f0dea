"""The paper code's initialisation, shared by the registry's architectures."""

from __future__ import annotations

from torch import nn


def init_weights(model: nn.Module) -> None:
    """The paper code's init: conv weights ~ N(0, 2 / (k * k * out_channels)) (He et
    al. 2015, fan-out), conv biases 0, BN weight 1 and bias 0. Linear layers keep
    PyTorch's default init, as in the paper's code."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
