"""Stage train_endpoint@<seed>: train one network from a seed with the paper's standard schedule
(:func:`modeconn.endpoints.train_network`).

Writes the checkpoint (plus the extra checkpoints of ``train.save_epochs``, where FGE starts), the test- and
validation-set log-probabilities for ensembling, a per-epoch CSV and a metrics JSON.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import typer

from modeconn.endpoints import train_network
from modeconn.io import atomic_dir, atomic_torch_save, save_checkpoint
from modeconn.runtime import CPU, Runtime, seed_everything

from .kit.cli import ParamsOpt, PreparedOpt, console, log, progress, stage_app
from .kit.config import check_batch_size, read_sections
from .kit.inputs import prepared_data, test_loader, train_loader, val_split
from .kit.layout import ENDPOINT_METRICS, ENDPOINTS, endpoint_dir, endpoint_metrics, endpoint_run, prepared_files
from .kit.records import write_csv, write_metrics
from .kit.resume_key import resume_state


def main(
    seed: int = typer.Option(..., "--seed", help="Seed of this endpoint (one of train.seeds)."),
    params: Path = ParamsOpt,
    prepared: Path = PreparedOpt,
    out: Path = typer.Option(None, "--out", help="Output folder [default: data/endpoints/seed_<seed>]."),
    metrics: Path = typer.Option(None, "--metrics", help="Metrics JSON [default: metrics/endpoints/seed_<seed>.json]."),
    log_csv: Path = typer.Option(None, "--history", help="Per-epoch CSV [default: metrics/endpoints/seed_<seed>.csv]."),
    runtime: Runtime = CPU,
) -> None:
    """Train the endpoint network of one seed with the standard schedule (params: model, train)."""
    cfg, model_cfg = read_sections(params, "train", "model")
    out = out or endpoint_dir(ENDPOINTS, seed)
    metrics = metrics or endpoint_metrics(ENDPOINT_METRICS, seed)
    log_csv = log_csv or endpoint_metrics(ENDPOINT_METRICS, seed).with_suffix(".csv")
    t0 = time.perf_counter()
    seed_everything(seed)
    data = prepared_data(prepared, runtime)
    check_batch_size("train.batch_size", cfg.batch_size, len(data.train), prepared)
    spec = model_cfg.spec(data.info)
    model = runtime.prepare(model_cfg.build(data.info))  # model.weights, when set, loaded here
    batches = train_loader(data, cfg.batch_size, seed, runtime)
    inputs = prepared_files(prepared)  # and model_cfg brings the content of model.weights into the key
    resume = resume_state(endpoint_run(seed), runtime, cfg, model_cfg, {"seed": seed}, inputs=inputs)
    n_train, n_test = data.train.y.numel(), data.test.y.numel()
    log.info(f"seed {seed}: {spec['name']} on {data.info.name} ({n_train} train, {n_test} test), {cfg.epochs} epochs")
    net = train_network(
        model,
        batches,
        test_loader(data, runtime),
        epochs=cfg.epochs,
        lr=cfg.lr,
        momentum=cfg.momentum,
        wd=cfg.wd,
        save_epochs=cfg.save_epochs,
        val_batches=val_split(data, runtime)[0],
        runtime=runtime,
        resume=resume,
        progress=functools.partial(progress, f"train_endpoint seed {seed}"),
        what=f"endpoint training (seed {seed})",
    )
    if not runtime.is_main:  # rank 0 evaluated and writes; the others only trained
        return
    scores = net.scores()  # val_* from the split that chooses settings, never test
    run = dict(seed=seed, dataset=data.info.name, model=spec["name"], model_args=spec["args"], epochs=cfg.epochs)
    run.update(train_images=int(n_train), **net.timing(), **runtime.as_dict())
    with atomic_dir(out) as tmp:
        optimizer = net.optimizer.state_dict()
        save_checkpoint(tmp / "model.pt", spec, model.state_dict(), epoch=cfg.epochs, seed=seed, optimizer=optimizer)
        for epoch, kept in net.checkpoints.items():
            save_checkpoint(
                tmp / f"epoch_{epoch}.pt", spec, kept["state_dict"], epoch=epoch, seed=seed, optimizer=kept["optimizer"]
            )
        atomic_torch_save({"logprobs": net.logprobs, "labels": net.labels}, tmp / "test_logprobs.pt")
        if net.val_logprobs is not None:
            atomic_torch_save({"logprobs": net.val_logprobs, "labels": net.val_labels}, tmp / "val_logprobs.pt")
    write_csv(log_csv, net.rows)
    write_metrics(metrics, scores, run)
    resume.clear()
    console.print(
        f"[bold]seed {seed}[/]: test accuracy {scores['test_accuracy']:.4f}, NLL {scores['test_nll']:.4f} after "
        f"{cfg.epochs} epochs ({time.perf_counter() - t0:.0f} s, {net.images_per_s:.0f} img/s) → {out}"
    )


app = stage_app(main, data_parallel=True)

if __name__ == "__main__":
    app()
