"""Data-parallel training throughput with 1 and N processes: ``python -m tools.bench_ddp`` (``make bench``).

The driver runs the same measurement twice — as one process, then under ``torchrun --standalone
--nproc-per-node N`` — and prints the training images/s of each and their ratio. Each measurement trains
the params' model on the params' data (or ``--dataset synthetic``) with the ``train`` section's global batch
and optimiser: warm-up steps, then ``--batches`` timed steps, between two barriers, so process start-up and
the process group's set-up are not in the figure. With N processes each takes 1/N of every batch and DDP
averages the gradients (gloo on a CPU, NCCL on GPUs).

On a machine with fewer cores than N × the threads a process wants, the N processes share the same cores:
the ratio then measures what data parallelism costs (the all-reduce of the gradients, smaller per-process
batches), not a speed-up. On N GPUs it is the speed-up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import typer
from rich.console import Console

from modeconn.data import Loader
from modeconn.errors import ModeconnError
from modeconn.io import atomic_write_json
from modeconn.runtime import Runtime, seed_everything
from modeconn.train import cross_entropy_step, make_sgd, train_epoch
from stages.kit.cli import ChannelsLastOpt, DeviceOpt, PrecisionOpt
from stages.kit.config import read_sections
from tools.bench.workload import build, load_data

MARK = "BENCH_DDP "  # the line a worker prints its figures on
WARMUP = 3


def measure(params: Path, batches: int, dataset: str | None, runtime: Runtime) -> dict:
    """Training images/s (global) of ``batches`` timed steps in this process group."""
    data_cfg, model_cfg, train_cfg = read_sections(params, "data", "model", "train")
    data, source = load_data(data_cfg, dataset)
    data = data.to(runtime.device)
    seed_everything(0)
    model = runtime.prepare(build(model_cfg, data.info))
    loader = Loader(
        data.train,
        data.info,
        train_cfg.batch_size,
        train=True,
        drop_last=True,
        channels_last=runtime.channels_last,
        shard=runtime.shard,
    )
    optimizer = make_sgd(model.parameters(), train_cfg.lr, train_cfg.momentum, train_cfg.wd)
    step = cross_entropy_step(runtime.wrap(model))

    def steps(n: int) -> None:
        batches_left, it = n, 1
        while batches_left > 0:
            chunk = [b for _, b in zip(range(batches_left), loader)]
            if not chunk:
                raise ModeconnError(f"no full batch of {train_cfg.batch_size} in the training split")
            train_epoch(step, optimizer, chunk, lambda i: train_cfg.lr, it, runtime)
            batches_left -= len(chunk)

    model.train()
    steps(WARMUP)
    runtime.barrier()
    start = time.perf_counter()
    steps(batches)
    runtime.synchronize()
    runtime.barrier()
    seconds = time.perf_counter() - start
    return {
        "processes": runtime.world_size,
        "images_per_s": batches * train_cfg.batch_size / seconds,
        "seconds": seconds,
        "batches": batches,
        "global_batch": train_cfg.batch_size,
        "model": model_cfg.name,
        "dataset": data.info.name,
        "source": source,
        "runtime": runtime.describe(),
    }


def run_measurement(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith(MARK)]
    if out.returncode or not lines:
        raise ModeconnError(
            f"the measurement `{' '.join(cmd[1:])}` failed (exit code {out.returncode}):\n{out.stderr[-2000:]}"
        )
    return json.loads(lines[-1][len(MARK) :])


def main(
    params: Path = typer.Option(Path("params.yaml"), "--params", help="The params file (data, model, train)."),
    processes: int = typer.Option(2, "--processes", help="Processes of the data-parallel measurement."),
    batches: int = typer.Option(30, "--batches", help="Timed training steps (global batches)."),
    dataset: str = typer.Option(None, "--dataset", help="Use this dataset instead of data.name (e.g. synthetic)."),
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    channels_last: str = ChannelsLastOpt,
    worker: bool = typer.Option(False, "--worker", hidden=True, help="Measure in this process (group) and print."),
    json_out: Path = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
) -> None:
    """Training images/s with 1 and N processes (DDP through torchrun)."""
    console = Console(stderr=True)
    try:
        if worker:
            runtime = Runtime.resolve(device, precision, channels_last)
            try:
                figures = measure(params, batches, dataset, runtime)
            finally:
                runtime.close()
            if runtime.is_main:
                print(MARK + json.dumps(figures), flush=True)
            return
        if processes < 2:
            raise ModeconnError(f"--processes {processes}: compare 1 process with at least 2")
        args = [
            "-m",
            "tools.bench_ddp",
            "--worker",
            "--params",
            str(params),
            "--batches",
            str(batches),
            "--device",
            device,
            "--precision",
            precision,
            "--channels-last",
            channels_last,
        ]
        if dataset:
            args += ["--dataset", dataset]
        one = run_measurement([sys.executable, *args])
        many = run_measurement(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", *args]
        )
    except ModeconnError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    ratio = many["images_per_s"] / one["images_per_s"]
    cores = len(os.sched_getaffinity(0))
    print(
        f"data-parallel training, {one['model']} on {one['dataset']}, global batch {one['global_batch']}, "
        f"{batches} timed steps after {WARMUP} warm-up; {one['runtime']}; {torch.get_num_threads()} threads, "
        f"{cores} usable CPU cores"
    )
    print(f"  1 process:   {one['images_per_s']:,.0f} images/s")
    print(f"  {processes} processes: {many['images_per_s']:,.0f} images/s  ({ratio:.2f}x of 1 process)")
    if many["runtime"].startswith("runtime: device cpu") and cores < 2 * processes:
        print(
            f"  ({processes} processes on {cores} CPU cores share them: this measures the overhead of data "
            "parallelism, not a speed-up)"
        )
    if json_out is not None:
        atomic_write_json(json_out, {"one": one, "many": many, "ratio": ratio, "usable_cores": cores})


app = typer.Typer(add_completion=False)
app.command()(main)

if __name__ == "__main__":
    app()
