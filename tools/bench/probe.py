"""What each measured section really ran with (device, memory formats, output dtype, checked against the
runtime) and, on CUDA, the device memory it peaked at."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from modeconn.runtime import Runtime

from .figures import Figure
from .settings import MIB


class Probe:
    """What the forward passes of each section really ran with: device, memory format of the input and
    of the first convolution's weight, output dtype.

    Forward hooks on each watched network and on its first convolution (they fire in a curve's forward
    too, where the convolution sees the weight it is called with, a view of φ_θ(t)) record the first
    forward pass of every section; :meth:`mismatches` compares them with the runtime.
    """

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.section: str | None = None
        self.seen: dict[str, dict[str, str]] = {}
        self.conv_weight: dict[str, str] = {}  # section -> memory format of the first conv's weight
        self.expected_sections: list[str] = []

    def watch(self, module: nn.Module) -> nn.Module:
        module.register_forward_hook(self._hook)
        conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
        if conv is not None:
            conv.register_forward_hook(self._conv_hook)
        return module

    def _conv_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self.section is not None and self.section not in self.conv_weight:
            self.conv_weight[self.section] = self._format(module.weight)

    def _hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self.section is None or self.section in self.seen or not args or not isinstance(output, torch.Tensor):
            return
        x = args[0]
        self.seen[self.section] = {
            "device": str(x.device),
            "memory_format": self._format(x),
            **({"weight_memory_format": self.conv_weight[self.section]} if self.section in self.conv_weight else {}),
            "output_dtype": str(output.dtype).removeprefix("torch."),
        }

    def _format(self, x: torch.Tensor) -> str:
        """The layout of x, naming the runtime's own first when both fit (one channel, 1x1 images)."""
        formats = [("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)]
        if self.runtime.channels_last:
            formats.reverse()
        for name, memory_format in formats:
            if (x.dim() == 4 and x.is_contiguous(memory_format=memory_format)) or (x.dim() != 4 and x.is_contiguous()):
                return name
        return "strided"

    def expected(self) -> dict[str, str]:
        layout = "channels_last" if self.runtime.channels_last else "contiguous"
        return {
            "device": self.runtime.device.type,
            "memory_format": layout,
            "weight_memory_format": layout,  # checked where the network has a convolution
            "output_dtype": "bfloat16" if self.runtime.precision == "bf16" else "float32",
        }

    def mismatches(self) -> list[str]:
        """One line per section whose forward passes did not run as the runtime says (none seen counts)."""
        want, out = self.expected(), []
        for section in self.expected_sections:
            seen = self.seen.get(section)
            if seen is None:
                out.append(f"{section}: no forward pass seen")
                continue
            got = {**seen, "device": torch.device(seen["device"]).type}
            wrong = [f"{k} {got[k]} (expected {v})" for k, v in want.items() if k in got and got[k] != v]
            if wrong:
                out.append(f"{section}: {', '.join(wrong)}")
        return out


class Sections:
    """Runs each measurement as a named section: status line, runtime probe, and on CUDA its own peak memory."""

    def __init__(self, runtime: Runtime, probe: Probe, status: Callable[[str], Any]):
        self.runtime, self.probe, self.status = runtime, probe, status
        self.cuda = runtime.device.type == "cuda"
        self.peaks: dict[str, list[float]] = {}  # MiB allocated at most during the section, per run
        self.before: dict[str, float] = {}  # MiB allocated when the section first started

    def __call__(self, key: str, what: str, fn: Callable[[], float]) -> float:
        self.status(what)
        if key not in self.probe.expected_sections:
            self.probe.expected_sections.append(key)
        device = self.runtime.device
        if self.cuda:
            self.runtime.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            self.before.setdefault(key, torch.cuda.memory_allocated(device) / MIB)
        self.probe.section = key
        try:
            value = fn()
        finally:
            self.probe.section = None
        if self.cuda:
            self.runtime.synchronize()
            self.peaks.setdefault(key, []).append(torch.cuda.max_memory_allocated(device) / MIB)
        return value

    def memory_figures(self, labels: dict[str, str]) -> dict[str, Figure]:
        """On CUDA, the peak device memory of each section and over all of them; nothing elsewhere."""
        if not self.peaks:
            return {}
        figures = {
            f"cuda_peak_{key}": Figure(
                f"peak CUDA memory allocated: {labels.get(key, key)} ({self.before[key]:,.0f} MiB allocated before)",
                "MiB",
                peaks,
            )
            for key, peaks in self.peaks.items()
        }
        overall = [max(runs) for runs in zip(*self.peaks.values())]  # one per round
        figures["cuda_peak"] = Figure("peak CUDA memory allocated, all sections", "MiB", overall)
        return figures
