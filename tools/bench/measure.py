"""The whole measurement: the default model's figures, the paper model's where asked, and what the machine
and the runtime were meanwhile."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from typing import Any

from modeconn.runtime import Runtime, seed_everything

from .default import measure_default
from .figures import Figure, Result
from .host import OtherLoad, machine, peak_rss_mib, release
from .paper import measure_paper
from .probe import Probe, Sections
from .settings import Settings


def run(settings: Settings, status: Callable[[str], Any] | None = None) -> Result:
    """Measure everything; ``status(message)`` is told what is being measured."""
    status = status or (lambda message: None)
    seed_everything(settings.seed)
    runtime = Runtime.resolve(settings.device, settings.precision, settings.channels_last)
    host = machine(runtime)  # before any work: the memory of the imports
    # Other processes on the same cores slow every figure (and collapse OpenMP's throughput).
    others, started = OtherLoad(), time.perf_counter()
    section = Sections(runtime, Probe(runtime), status)

    figures, setup = measure_default(settings, runtime, section, status)
    paper = runtime.device.type == "cuda" if settings.paper_model is None else settings.paper_model
    setup["paper"] = None
    if paper:
        release(runtime)  # the default model's networks and data, gone with measure_default's frame
        paper_figures, setup["paper"] = measure_paper(settings, runtime, section, status)
        figures.update(paper_figures)
    release(runtime)

    host["other_processes_cpus"] = others.cpus()
    host["bench_seconds"] = time.perf_counter() - started
    figures["peak_rss"] = Figure("peak resident memory, this process", "MiB", [peak_rss_mib(resource.RUSAGE_SELF)])
    if any(s["workers"] > 0 for s in setup["dataloader_settings"]):
        figures["peak_rss_worker"] = Figure(
            "peak resident memory, largest DataLoader worker (shared pages too)",
            "MiB",
            [peak_rss_mib(resource.RUSAGE_CHILDREN)],
        )
    figures.update(section.memory_figures({k: f.label for k, f in figures.items()}))
    setup["runtime"] = runtime.as_dict()
    setup["runtime_expected"] = section.probe.expected()
    setup["runtime_observed"] = section.probe.seen
    setup["runtime_mismatches"] = section.probe.mismatches()
    return Result(host, setup, figures)
