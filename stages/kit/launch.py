"""How many processes a training stage runs, how it starts them under torchrun, and the failure drill.

``$MODECONN_NPROC=N`` (a setting of the machine, not a param) runs each training stage as N processes;
``$MODECONN_FAULT_RANK`` makes one of them fail on purpose, to check that a failure ends the run cleanly.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from rich.console import Console

from modeconn.data import Loader
from modeconn.errors import ConfigError, ModeconnError
from modeconn.runtime import Runtime

NPROC_ENV = "MODECONN_NPROC"  # processes per training stage; a setting of the machine, not a param
FAULT_ENV = "MODECONN_FAULT_RANK"  # a drill: R (rank R raises at start) or R:I (at its I-th training step)
PREEMPTED_EXIT = 75  # EX_TEMPFAIL: stopped on purpose after saving its state; rerun to continue

log = logging.getLogger("modeconn")  # the stages' logger (stages.kit.cli sets up its output)


def processes() -> int:
    """$MODECONN_NPROC: processes per training stage (1: no torchrun)."""
    value = os.environ.get(NPROC_ENV, "1")
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{NPROC_ENV}={value!r}: set it to the number of processes per training stage (1, 2, …)")
    return int(value)


def fault_step(runtime: Runtime) -> int | None:
    """$MODECONN_FAULT_RANK, a failure drill for this process: 0 (raise at start), I (raise at its I-th
    training step, inside the training loop while the other ranks wait in the gradient all-reduce), or None
    (not this rank, or no drill). The value is ``R`` or ``R:I``."""
    value = os.environ.get(FAULT_ENV, "")
    if not value:
        return None
    rank, _, step = value.partition(":")
    if not rank.isdigit() or (step and not step.isdigit()):
        raise ConfigError(f"{FAULT_ENV}={value!r}: use RANK (fail at start) or RANK:ITERATION, e.g. 1 or 1:5")
    return int(step or 0) if int(rank) == runtime.rank else None


class FaultyBatches:
    """A training loader that raises at this process's ``step``-th batch (counted over epochs): the drill of
    $MODECONN_FAULT_RANK=R:I. Everything else is the loader's."""

    def __init__(self, loader: Loader, rank: int, step: int):
        self._loader, self._rank, self._step, self._drawn = loader, rank, step, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator:
        for batch in self._loader:
            self._drawn += 1
            if self._drawn == self._step:
                raise ModeconnError(
                    f"fault injected on rank {self._rank} at training step {self._step} ({FAULT_ENV}), as a drill"
                )
            yield batch


# torchrun's own report of a failure (after every rank has ended or been sent SIGTERM): its log lines, its
# traceback and its table of failures, each rank's exit code on an "exitcode : C" line.
TORCHRUN_REPORT = re.compile(r"torch/distributed/elastic/.*\] (Sending process \d+ closing signal|failed \(exitcode)")


def launch(module: str, nproc: int) -> int:
    """Run this command again under ``torchrun --standalone --nproc-per-node nproc``; its exit code.

    torchrun starts the processes, joins them, and ends them all when one fails (raises, or is killed). Its
    output passes through; on a failure the last line names the rank that failed first and how (torchrun's
    "Root Cause" record), so that the one line a log reader looks at says which process to read above. Ranks
    that stop on purpose after saving their state (exit code PREEMPTED_EXIT, the preemption drill) are no
    failure: torchrun's report gives way to one line saying so, and the exit code is PREEMPTED_EXIT."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        module,
        *sys.argv[1:],
    ]
    log.info("starting %d processes: %s", nproc, " ".join(cmd[1:]))
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, errors="replace")
    seen: list[str] = []
    report: list[str] = []  # torchrun's report of a failure, held until it is known whether to show it
    assert proc.stderr is not None
    for line in proc.stderr:  # until torchrun and every rank have closed it
        seen.append(line)
        if report or TORCHRUN_REPORT.search(line):
            report.append(line)
        else:
            sys.stderr.write(line)
    code = proc.wait()
    err = Console(stderr=True, soft_wrap=True)
    if code and preempted("".join(seen)):
        err.print(
            f"[bold yellow]preempted:[/] the {nproc}-process run of {module} stopped after saving its state "
            f"(exit code {PREEMPTED_EXIT}); rerun the same command to continue.",
            highlight=False,
        )
        return PREEMPTED_EXIT
    sys.stderr.write("".join(report))
    if code:
        err.print(
            f"[bold red]error:[/] the {nproc}-process run of {module} failed{failed_rank(''.join(seen))} "
            f"(torchrun exit code {code}); the failing rank's message is above. Nothing was written.",
            highlight=False,
        )
    return code


def preempted(torchrun_output: str) -> bool:
    """Whether torchrun's report says the run was preempted: the rank that ended first exited with
    PREEMPTED_EXIT and no rank failed otherwise (the others exited so too, or by torchrun's SIGTERM)."""
    _, found, table = torchrun_output.rpartition("Failures:")
    _, _, cause = table.rpartition("Root Cause")
    first = re.search(r"exitcode\s*:\s*(-?\d+)", cause) if found else None
    codes = [int(c) for c in re.findall(r"exitcode\s*:\s*(-?\d+)", table)]
    return (
        first is not None and int(first.group(1)) == PREEMPTED_EXIT and all(c == PREEMPTED_EXIT or c < 0 for c in codes)
    )


def failed_rank(torchrun_output: str) -> str:
    """ ", rank R exited with code C" (or "was killed by SIGKILL") from torchrun's Root Cause record; "" if none."""
    _, found, cause = torchrun_output.rpartition("Root Cause")
    rank = re.search(r"rank\s*:\s*(\d+)", cause) if found else None
    if rank is None:
        return ""
    code = re.search(r"exitcode\s*:\s*(-?\d+)", cause)
    exit_code = int(code.group(1)) if code else None
    if exit_code is not None and exit_code < 0:
        try:
            how = f"was killed by {signal.Signals(-exit_code).name}"
        except ValueError:
            how = f"was killed by signal {-exit_code}"
    else:
        how = f"exited with code {exit_code}" if exit_code is not None else "failed"
    return f": rank {rank.group(1)} {how} first"
