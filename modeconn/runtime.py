"""The runtime of a command: device, precision, memory format and processes, decided once (DESIGN decision 6).

The defaults follow the device: on CUDA, bf16 autocast and channels_last; on
the CPU, float32 and the usual NCHW layout. Every part can be forced by the
caller (the stages take ``--device``, ``--precision``, ``--channels-last`` and
the environment variables ``MODECONN_DEVICE``, ``MODECONN_PRECISION``,
``MODECONN_CHANNELS_LAST``), so the GPU code path runs, and is tested, on a
CPU. Nothing else in modeconn looks at ``device.type``: the training loop, the
evaluation passes and BN recalibration take a :class:`Runtime`.

What stays float32 under bf16 autocast: the weights themselves, the point on
a curve φ_θ(t) and its L2 term (see :mod:`modeconn.curves`), the loss
(cross-entropy of the logits cast to float32) and every stored prediction.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import torch
from torch import nn

from .errors import ConfigError

PRECISIONS = ("fp32", "bf16")
AUTO = "auto"


def resolve_device(name: str | None = AUTO) -> torch.device:
    """``auto`` → CUDA if available, else CPU. Any torch device string otherwise."""
    if name in (None, "", AUTO):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"unknown device {name!r} (--device / MODECONN_DEVICE): use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"--device {name!r} (or MODECONN_DEVICE) asks for CUDA, but CUDA is not available here: use --device cpu"
        )
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name!r}: modeconn runs on cpu or cuda")
    return device


def _flag(value: str | bool | None, option: str) -> bool | None:
    """``auto``/None → None (follow the device); 1/0, true/false, on/off → bool."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("", AUTO):
        return None
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{option} = {value!r}: use auto, 1 or 0")


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors are computed; build it with :meth:`resolve`."""

    device: torch.device = torch.device("cpu")
    precision: str = "fp32"  # "fp32" | "bf16" (autocast of the forward pass; weights stay float32)
    channels_last: bool = False  # 4-D weights and image batches in NHWC memory layout
    world_size: int = 1  # processes of a data-parallel run
    rank: int = 0

    @classmethod
    def resolve(
        cls, device: str | None = AUTO, precision: str | None = AUTO, channels_last: str | bool | None = AUTO
    ) -> Runtime:
        """The runtime for ``device`` with ``precision`` and ``channels_last`` forced or following the device.

        Forcing what the device cannot do (bf16 on a GPU without bf16) is a ConfigError naming the option.
        """
        dev = resolve_device(device)
        cuda = dev.type == "cuda"
        if precision in (None, "", AUTO):
            precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
        if precision not in PRECISIONS:
            raise ConfigError(f"--precision {precision!r} (or MODECONN_PRECISION) unknown: use auto, fp32 or bf16")
        if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
            raise ConfigError(
                f"--precision bf16 (or MODECONN_PRECISION=bf16): the GPU {torch.cuda.get_device_name(dev)} "
                "does not support bfloat16; use --precision fp32"
            )
        flag = _flag(channels_last, "--channels-last (MODECONN_CHANNELS_LAST)")
        return cls(dev, precision, cuda if flag is None else flag)

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for float32."""
        return torch.bfloat16 if self.precision == "bf16" else None

    def autocast(self):
        """The context of every forward pass: bf16 autocast on this device type, or nothing."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def prepare(self, module: nn.Module) -> nn.Module:
        """``module`` on the device; with channels_last, every 4-D parameter and buffer in NHWC layout.

        Only 4-D tensors are converted (conv weights): a curve keeps its bends as 5-D stacks, which
        ``Module.to(memory_format=...)`` refuses.
        """
        module = module.to(self.device)
        if self.channels_last:
            module._apply(lambda t: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t)
        return module

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """An input batch in this runtime's memory layout."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def as_dict(self) -> dict:
        """What a stage's run information records."""
        return {
            "device": str(self.device),
            "precision": self.precision,
            "channels_last": self.channels_last,
            "processes": self.world_size,
        }

    def describe(self) -> str:
        """One line for the first log line of a stage."""
        name = str(self.device)
        if self.device.type == "cuda":
            name += f" ({torch.cuda.get_device_name(self.device)})"
        else:
            name += f" ({torch.get_num_threads()} threads)"
        return (
            f"runtime: device {name}, precision {self.precision}, memory format "
            f"{'channels_last' if self.channels_last else 'contiguous'}, {self.world_size} process(es)"
        )


CPU = Runtime()  # float32, NCHW, one process: what library calls without a runtime use


def seed_everything(seed: int) -> None:
    """Seed Python and torch (CPU and CUDA). Same params on the same machine → same numbers."""
    random.seed(seed)
    torch.manual_seed(seed)


def derived_seed(seed: int, offset: int) -> int:
    """A seed of its own for the ``offset``-th of several runs under one ``seed`` (e.g. one FGE run per endpoint)."""
    return seed * 1000 + offset
