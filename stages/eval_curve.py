"""Stage eval_curve: loss and error along the fitted curve and along the straight segment.

At each of ``eval.num_points`` equally spaced t, for the curve and for the
segment between the same endpoints: recalibrate BatchNorm at φ(t), then
measure train loss (with and without the 0.5·wd·‖φ(t)‖² term), train error,
test NLL and test error (paper, Sec. 3). Summaries per path (ends, min, max,
mean over t, integral over arc length), the lengths, and the curve ensembles
of Sec. 4 (all grid points, with and without per-point temperature scaling).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import pandas as pd
import torch
import typer

from modeconn import ensemble
from modeconn.curves import flat, load_curve, segment_of
from modeconn.data import Loader
from modeconn.io import atomic_dir, atomic_torch_save
from modeconn.metrics import path_summary
from modeconn.paths import measure
from modeconn.plots import along_t
from modeconn.train import prepare_module, resolve_device, seed_everything

from .common import (DeviceOpt, ParamsOpt, PreparedOpt, build_model, console, load_prepared, log, progress,
                     read_params, require, section, user_errors, write_csv, write_json)

MEASURES = ("train_loss", "train_nll", "train_error", "test_nll", "test_error")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """``eval``: the t grid and evaluation sizes (paper: 61 points, whole training set)."""

    num_points: int = 21
    batch_size: int = 500
    bn_samples: int = 0
    train_samples: int = 0
    ensemble: str = "probs"
    seed: int = 0

    def __post_init__(self):
        require(self.num_points >= 2, f"eval.num_points must be at least 2 (the t grid includes both ends), "
                f"got {self.num_points}")
        require(self.batch_size >= 1, f"eval.batch_size must be at least 1, got {self.batch_size}")
        require(self.bn_samples >= 0, f"eval.bn_samples must be 0 (all) or positive, got {self.bn_samples}")
        require(self.train_samples >= 0, f"eval.train_samples must be 0 (all) or positive, got {self.train_samples}")
        require(self.ensemble in ensemble.METHODS,
                f"eval.ensemble {self.ensemble!r} unknown; use one of {', '.join(ensemble.METHODS)}")


def eval_loaders(data, batch_size: int, bn_samples: int, train_samples: int, seed: int, channels_last: bool):
    """BN, train-measure, test and validation batches — all without augmentation."""
    def loader(split, n=0):
        return Loader(split, data.info, batch_size, train=False, seed=seed, max_samples=n or None,
                      channels_last=channels_last)

    return (loader(data.train, bn_samples), loader(data.train, train_samples), loader(data.test),
            loader(data.val) if data.val is not None else None)


def evaluate(cfg: EvalConfig, prepared: Path, curve_dir: Path, out: Path, metrics: Path, table: Path,
             device_name: str) -> dict:
    device = resolve_device(device_name)
    seed_everything(cfg.seed)
    curve, blob = load_curve(curve_dir / "curve.pt", build_model)
    wd = float(blob.get("wd", 0.0))
    segment = segment_of(curve, build_model(blob["spec"]))
    curve, segment = prepare_module(curve, device), prepare_module(segment, device)
    data = load_prepared(prepared, device)
    bn_b, train_b, test_b, val_b = eval_loaders(data, cfg.batch_size, cfg.bn_samples, cfg.train_samples,
                                                cfg.seed, device.type == "cuda")
    ts = torch.linspace(0, 1, cfg.num_points).tolist()
    rows, stored, lengths = [], {}, {}
    log.info("evaluating the %s and the segment at %d points of t on %s (BN over %d, train loss over %d images)",
             blob["kind"], cfg.num_points, data.info.name, bn_b.n, train_b.n)
    with progress("eval_curve", 2 * cfg.num_points) as advance:
        for name, path in (("curve", curve), ("segment", segment)):
            test_lp, val_lp, arc, prev = [], [], [0.0], None
            for t in ts:
                with torch.no_grad():
                    weights = {k: v.detach() for k, v in path.weights(t).items()}
                point = flat(weights)
                if prev is not None:
                    arc.append(arc[-1] + (point - prev).norm().item())
                prev = point
                r = measure(path.template, weights, bn_batches=bn_b, train_batches=train_b, test_batches=test_b,
                            val_batches=val_b, device=device)
                row = {"path": name, "t": t, "train_loss": r.train_nll + 0.5 * wd * r.l2, "train_nll": r.train_nll,
                       "train_error": r.train_error, "test_nll": r.test_nll, "test_error": r.test_error}
                if r.val_logprobs is not None:
                    temp = ensemble.fit_temperature(r.val_logprobs, data.val.y.cpu())
                    row["temperature"] = temp
                    row["test_nll_scaled"] = ensemble.nll(ensemble.scale(r.test_logprobs, temp), data.test.y.cpu())
                    val_lp.append(r.val_logprobs)
                rows.append(row)
                test_lp.append(r.test_logprobs)
                advance(f"{name} t={t:.2f} test err {r.test_error:.4f}")
            lengths[name] = arc[-1]
            stored[name] = {"t": torch.tensor(ts), "logprobs": torch.stack(test_lp),  # (P, N, K)
                            "val_logprobs": torch.stack(val_lp) if val_lp else None, "arc": torch.tensor(arc)}
    labels = data.test.y.cpu()
    with atomic_dir(out) as tmp:
        for name, blob_ in stored.items():
            atomic_torch_save({**blob_, "labels": labels}, tmp / f"{name}.pt")
    summary = summarise(rows, stored, lengths, labels, cfg.ensemble,
                        data.val.y.cpu() if data.val is not None else None)
    summary["setup"] = {"dataset": data.info.name, "model": blob["spec"]["name"], "type": blob["kind"],
                        "num_bends": blob["num_bends"], "endpoints": blob.get("endpoints"),
                        "num_points": cfg.num_points, "bn_samples": bn_b.n if _has_bn(curve) else 0,
                        "train_samples": train_b.n, "test_samples": int(labels.numel())}
    write_csv(table, rows)
    write_json(metrics, summary)
    return summary


def _has_bn(curve) -> bool:
    from modeconn.bn import has_bn

    return has_bn(curve.template)


def summarise(rows: list[dict], stored: dict, lengths: dict, labels: torch.Tensor, method: str,
              val_labels: torch.Tensor | None) -> dict:
    """Per-path summaries of every measure, the lengths, and the ensembles of Sec. 4."""
    out: dict = {}
    for name in stored:
        path_rows = [r for r in rows if r["path"] == name]
        t = [r["t"] for r in path_rows]
        arc = stored[name]["arc"].tolist()
        out[name] = {m: path_summary(t, [r[m] for r in path_rows], arc) for m in MEASURES}
    out["length"] = {"curve": lengths["curve"], "segment": lengths["segment"],
                     "ratio": lengths["curve"] / lengths["segment"] if lengths["segment"] > 0 else math.nan}
    curve_lp = list(stored["curve"]["logprobs"])
    ends = [curve_lp[0], curve_lp[-1]]
    ens = {"method": method, "members": len(curve_lp)}
    for label, members in (("endpoints", ends), ("curve", curve_lp), ("segment", list(stored["segment"]["logprobs"]))):
        lp = ensemble.combine(members, method)
        ens[label] = {"accuracy": ensemble.accuracy(lp, labels), "nll": ensemble.nll(lp, labels)}
    if stored["curve"]["val_logprobs"] is not None:
        temps = [r["temperature"] for r in rows if r["path"] == "curve"]
        scaled = [ensemble.scale(lp, temp) for lp, temp in zip(curve_lp, temps)]
        lp = ensemble.combine(scaled, method)
        ens["curve_scaled"] = {"accuracy": ensemble.accuracy(lp, labels), "nll": ensemble.nll(lp, labels)}
        lp = ensemble.combine([scaled[0], scaled[-1]], method)
        ens["endpoints_scaled"] = {"accuracy": ensemble.accuracy(lp, labels), "nll": ensemble.nll(lp, labels)}
    out["ensemble"] = ens
    return out


def wide_rows(rows: list[dict]) -> list[dict]:
    """The long table as one row per t with ``<path>_<measure>`` columns (curve vs segment on one chart)."""
    by_t: dict[float, dict] = {}
    for r in rows:
        out = by_t.setdefault(r["t"], {"t": r["t"]})
        for m in MEASURES:
            out[f"{r['path']}_{m}"] = r[m]
    return list(by_t.values())


def main(
    params: Path = ParamsOpt,
    prepared: Path = PreparedOpt,
    curve: Path = typer.Option(Path("data/curve"), "--curve", help="Folder written by fit_curve."),
    out: Path = typer.Option(Path("data/curve_eval"), "--out", help="Output folder (test log-probabilities per t)."),
    metrics: Path = typer.Option(Path("metrics/curve.json"), "--metrics", help="Summary JSON."),
    table: Path = typer.Option(Path("metrics/curve_eval.csv"), "--table", help="One row per path and t."),
    wide: Path = typer.Option(Path("metrics/curve_along_t.csv"), "--wide",
                              help="One row per t, curve and segment side by side (DVC plots)."),
    figure: Path = typer.Option(Path("metrics/curve_along_t.png"), "--figure", help="PNG of loss and error along t."),
    device: str = DeviceOpt,
) -> None:
    """Measure train/test loss and error along the curve and the segment (params: eval)."""
    with user_errors():
        cfg = section(read_params(params), "eval", EvalConfig)
        t0 = time.perf_counter()
        s = evaluate(cfg, prepared, curve, out, metrics, table, device)
        rows = pd.read_csv(table).to_dict("records")
        write_csv(wide, wide_rows(rows))
        setup = s["setup"]
        along_t(rows, figure, title=f"{setup['type']} ({setup['num_bends']} bends) vs segment, {setup['model']} on "
                f"{setup['dataset']}")
        e = s["ensemble"]
        console.print(
            f"max test error: curve {s['curve']['test_error']['max']:.4f}, segment "
            f"{s['segment']['test_error']['max']:.4f} (ends {s['curve']['test_error']['start']:.4f}, "
            f"{s['curve']['test_error']['end']:.4f}); length ratio {s['length']['ratio']:.2f}; "
            f"ensemble accuracy curve {e['curve']['accuracy']:.4f} vs endpoints {e['endpoints']['accuracy']:.4f} "
            f"({time.perf_counter() - t0:.0f} s)")


app = typer.Typer(add_completion=False)
app.command()(main)

if __name__ == "__main__":
    app()
