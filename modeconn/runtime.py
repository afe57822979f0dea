"""The runtime of a command: device, precision, memory format and processes, decided once (DESIGN decision 6).

The defaults follow the device: on CUDA, bf16 autocast; on the CPU, float32.
The memory layout is channels_last (NHWC) on both, chosen by measurement: on
CUDA it is what tensor cores want; on the CPU `make bench` (its paired
channels_last / contiguous figures) measured the default ConvFC's training
1.25× and BN recalibration 1.78× faster in channels_last on this project's
2-core machine (docs/speed.md). Networks without 4-D weights are unaffected
but for the input batch's strides. Every part can be forced by the
caller (the stages take ``--device``, ``--precision``, ``--channels-last`` and
the environment variables ``MODECONN_DEVICE``, ``MODECONN_PRECISION``,
``MODECONN_CHANNELS_LAST``), so the GPU code path runs, and is tested, on a
CPU. Nothing else in modeconn looks at ``device.type``: the training loop, the
evaluation passes and BN recalibration take a :class:`Runtime`.

What stays float32 under bf16 autocast: the weights themselves, the point on
a curve φ_θ(t) and its L2 term (see :mod:`modeconn.curves`), the loss
(cross-entropy of the logits cast to float32) and every stored prediction.

The heap (glibc's malloc, on Linux): by default it hands every large block back to the OS when it is freed
and faults fresh pages in when the next step allocates it again; a training step allocates and frees the
same activations every batch, so on the CPU a good part of a step went to page faults (measured: the default
ConvFC's step took 1.4–1.9× as long). :func:`tune_heap` keeps freed memory for reuse instead (the mmap
threshold at glibc's maximum, 32 MiB, and a 1 GiB trim threshold), once per process, when a runtime is
resolved; ``MODECONN_HEAP=0`` leaves malloc as it is. It changes no number, only where memory comes from.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import hashlib
import os
import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .errors import ConfigError

PRECISIONS = ("fp32", "bf16")
DEFAULT_CHANNELS_LAST = True  # on every device: measured faster on CPU too (module docstring)
AUTO = "auto"


def as_channels_last(t: torch.Tensor) -> torch.Tensor:
    """A 4-D ``t`` with channels_last (NHWC) strides; other tensors unchanged.

    Also where NCHW and NHWC hold the same bytes (one channel, as in Fashion-MNIST's images and the first
    conv's weights): ``t.contiguous(memory_format=torch.channels_last)`` returns such a tensor as it is, with
    NCHW strides, and a convolution fed it picks its NCHW kernel and hands NCHW on to the next layer. A copy
    with explicit channels_last strides makes the whole network run channels_last.
    """
    if t.dim() != 4 or (t.is_contiguous(memory_format=torch.channels_last) and t.stride(1) == 1):
        return t
    return torch.empty_like(t, memory_format=torch.channels_last).copy_(t)


# mallopt(3) parameters of glibc and the values tune_heap sets.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
HEAP_SETTINGS = {
    "M_MMAP_THRESHOLD": (M_MMAP_THRESHOLD, 32 * 2**20),  # glibc's maximum: larger blocks are always mmapped
    "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, 2**30),
    "M_TOP_PAD": (M_TOP_PAD, 64 * 2**20),
}
_heap_state: dict[str, str] = {}


def tune_heap(enabled: bool | None = None) -> str:
    """Keep freed memory in the process's heap for reuse (glibc only); returns what the heap is now.

    ``enabled`` None follows ``MODECONN_HEAP`` (on unless it says 0). Done once per process: a later call
    returns the first one's answer. Where malloc is not glibc's (macOS, musl, an allocator in LD_PRELOAD such
    as jemalloc or tcmalloc) nothing changes, and the answer says so.
    """
    if "state" in _heap_state:
        return _heap_state["state"]
    if enabled is None:
        enabled = _flag(os.environ.get("MODECONN_HEAP", AUTO), "MODECONN_HEAP") is not False
    glibc = _confstr("CS_GNU_LIBC_VERSION")
    preload = os.environ.get("LD_PRELOAD", "")
    if not enabled:
        state = "malloc defaults (MODECONN_HEAP=0)"
    elif not glibc:
        state = "malloc defaults (not glibc)"
    elif any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        state = f"malloc from LD_PRELOAD ({preload}), not tuned"
    else:
        mallopt = ctypes.CDLL(None).mallopt  # glibc's, in the process already
        failed = [name for name, (key, value) in HEAP_SETTINGS.items() if mallopt(key, value) != 1]
        state = (
            "heap kept for reuse (glibc mallopt: mmap threshold 32 MiB, trim threshold 1 GiB, top pad 64 MiB)"
            if not failed
            else f"heap partly tuned: glibc refused {', '.join(failed)}"
        )
    _heap_state["state"] = state
    return state


def heap_state() -> str:
    """What :func:`tune_heap` did in this process, without doing it."""
    return _heap_state.get("state", "malloc defaults (no runtime resolved yet)")


def _confstr(name: str) -> str | None:
    """``os.confstr(name)``, or None where the system has no such value (or no confstr: Windows)."""
    try:
        return os.confstr(name)
    except (AttributeError, ValueError, OSError):
        return None


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

        Under ``torchrun`` (WORLD_SIZE > 1 in the environment) this joins the process group — NCCL on CUDA,
        gloo on the CPU — and each process takes the GPU of its LOCAL_RANK. Forcing what the device cannot
        do (bf16 on a GPU without bf16, CUDA where there is none) is a ConfigError naming the option.
        """
        world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
        dev = resolve_device(device)
        cuda = dev.type == "cuda"
        if world > 1 and cuda and dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if world > 1:
            if cuda:
                torch.cuda.set_device(dev)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))
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
        tune_heap()
        return cls(dev, precision, DEFAULT_CHANNELS_LAST if flag is None else flag, world, rank)

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that evaluates, logs and writes."""
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        """(rank, processes): which slice of every training batch this process takes."""
        return self.rank, self.world_size

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` as the training loop calls it: itself in one process; DistributedDataParallel
        (gradients averaged over the processes at every step) in several. On CUDA, BatchNorm becomes
        SyncBatchNorm (statistics over the global batch); gloo on the CPU has no SyncBatchNorm, so there each
        process normalises with the statistics of its own shard.

        Buffers are broadcast from rank 0 once, when the module is wrapped (with the parameters: every process
        starts from rank 0's network, whatever its own seed drew), and never at a step (DESIGN decision 9). By
        default DDP sends every buffer before every forward; a curve's endpoints ``start`` and ``end`` (2 × P
        floats) never change, and the only buffers that do, BatchNorm's running statistics, need no step's
        broadcast either: rank 0's are the ones written (a broadcast from rank 0 leaves them as they are, so
        the numbers saved are what they were with it), under SyncBatchNorm every process computes the same ones
        anyway, and a training forward reads none of them (it normalises with the batch's statistics; the
        running ones are recalibrated before a point is measured, DESIGN decision 2). What the other ranks
        keep in them (on gloo, the averages of their own shards) is never read: they only train."""
        if self.world_size == 1:
            return module
        if self.device.type == "cuda":
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process (any picklable object; itself in one process)."""
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def all_gather(self, obj: Any) -> list:
        """Every process's ``obj`` (any picklable object), in rank order, on every process ([obj] in one).
        E.g. each rank's own random states, for rank 0 to save (:class:`modeconn.resume.ResumeState`)."""
        if self.world_size == 1:
            return [obj]
        objs: list = [None] * self.world_size
        dist.all_gather_object(objs, obj)  # NCCL: through the current device, which resolve set
        return objs

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the processes, in place (itself in one process)."""
        if self.world_size > 1:
            dist.all_reduce(values)
        return values

    def barrier(self) -> None:
        """Wait for every process (nothing in one process)."""
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group (at the end of a command)."""
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()

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

        Only 4-D tensors are converted (conv weights; ``Module.to(memory_format=...)`` would refuse any 5-D
        tensor), and a module with a ``use_channels_last()`` method — a :class:`~modeconn.curves.Curve`, whose
        weights live in one flat vector — is asked to lay its conv weights out so.
        """
        module = module.to(self.device)
        if self.channels_last:
            module._apply(as_channels_last)
            for m in module.modules():  # modules that keep weights in their own storage (a Curve) relayout it
                if hasattr(m, "use_channels_last"):
                    m.use_channels_last()
        return module

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """An input batch in this runtime's memory layout."""
        return as_channels_last(x) if self.channels_last else x

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
            "heap": heap_state(),
        }

    def describe(self) -> str:
        """One line for the first log line of a stage."""
        name = str(self.device)
        if self.device.type == "cuda":
            name += f" ({torch.cuda.get_device_name(self.device)})"
        else:
            n = torch.get_num_threads()
            name += f" ({n} thread{'' if n == 1 else 's'})"
        return (
            f"runtime: device {name}, precision {self.precision}, memory format "
            f"{'channels_last' if self.channels_last else 'contiguous'}, {self.world_size} process(es); "
            f"{heap_state()}"
        )


CPU = Runtime()  # float32, NCHW, one process: what library calls without a runtime use


def seed_everything(seed: int, rank: int | None = None) -> None:
    """Seed Python and torch (CPU and CUDA) for process ``rank`` (default: this process's rank in the process
    group, 0 without one) with :func:`rank_seed`. Same params on the same machine → same numbers.

    These global streams are what is drawn per sample (dropout masks), so each process of a data-parallel run
    draws its own, as one process draws a different mask for every sample of the global batch. What must agree
    across the processes never comes from them: the batch order and augmentation (``Loader.generator``) and
    the t of a curve (``curve_loss``'s generator) come from generators seeded alike on every rank, and the
    network a run starts from, though each rank's seed draws its own, is rank 0's once DDP wraps it
    (:meth:`Runtime.wrap`)."""
    if rank is None:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    seed = rank_seed(seed, rank)
    random.seed(seed)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """The global seed of process ``rank`` of a run seeded ``seed``: ``seed`` itself on rank 0, so that a
    1-process run, and rank 0 of several, draws exactly what it drew before processes had seeds of their own;
    on rank r > 0, 63 bits of SHA-256 of (seed, r). Not ``seed + r``: rank 1 of seed 0 would then draw the
    masks of rank 0 of seed 1 (endpoints of consecutive seeds, with correlated dropout); nor any small
    number, which could be the seed of another run (``derived_seed`` gives seed · 1000 + offset)."""
    if rank == 0:
        return seed
    digest = hashlib.sha256(f"modeconn.rank_seed {seed} {rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # torch.manual_seed takes [0, 2^64); random.seed any int


def derived_seed(seed: int, offset: int) -> int:
    """A seed of its own for the ``offset``-th of several runs under one ``seed`` (e.g. one FGE run per endpoint)."""
    return seed * 1000 + offset
