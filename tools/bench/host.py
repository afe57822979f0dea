"""The machine the bench runs on: what it is, the memory the process and its workers peaked at, the CPUs other
processes kept busy meanwhile, and freeing what a phase left."""

from __future__ import annotations

import gc
import os
import platform
import resource
import time
from typing import Any

import torch

from modeconn.runtime import Runtime


def peak_rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


class OtherLoad:
    """CPUs that other processes kept busy, on average, since construction (Linux; else None).

    All busy time in /proc/stat minus this process's and its reaped children's CPU time.
    """

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                jiffies = [int(v) for v in f.readline().split()[1:8]]  # user nice system idle iowait irq softirq
        except (OSError, ValueError):
            return None
        busy = (sum(jiffies) - jiffies[3] - jiffies[4]) / os.sysconf("SC_CLK_TCK")
        ours = sum(
            r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        )
        return time.monotonic(), busy, ours

    def cpus(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None or end[0] <= self.start[0]:
            return None
        (t0, busy0, ours0), (t1, busy1, ours1) = self.start, end
        return max(0.0, (busy1 - busy0) - (ours1 - ours0)) / (t1 - t0)


def release(runtime: Runtime) -> None:
    """Free what the last phase left (its networks and data), so the next section's peak is its own."""
    gc.collect()
    if runtime.device.type == "cuda":
        torch.cuda.empty_cache()


def machine(runtime: Runtime) -> dict[str, Any]:
    device = runtime.device
    info = {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "precision": runtime.precision,
        "channels_last": runtime.channels_last,
        "runtime": runtime.describe(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "rss_after_imports_mib": peak_rss_mib(resource.RUSAGE_SELF),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
