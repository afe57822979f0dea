"""The report of a bench run: a header of what ran and how, warnings, and the figures (a rich table on a
terminal, aligned plain text otherwise)."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from .figures import Figure, Result


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def _spread(f: Figure) -> str:
    return f"{_fmt(min(f.runs))}–{_fmt(max(f.runs))}" if len(f.runs) > 1 else ""


def header_lines(result: Result) -> list[str]:
    m, s = result.machine, result.setup
    gpu = f" ({m['gpu']})" if "gpu" in m else ""
    args = ", ".join(f"{k}={v}" for k, v in s["model_args"].items())
    others = "?" if m["other_processes_cpus"] is None else f"{m['other_processes_cpus']:.2f}"
    tried = ", ".join(d["setting"] for d in s["dataloader_settings"])
    best = s["dataloader_best"]
    checked = (
        f"checked in every section: inputs {s['runtime_expected']['memory_format']}, conv weights "
        f"{s['runtime_expected']['weight_memory_format']}, outputs {s['runtime_expected']['output_dtype']}"
        if not s["runtime_mismatches"]
        else "NOT every section ran so (see the warning)"
    )
    lines = [
        f"machine: {m['cpus']} CPUs ({m['cpus_usable']} usable), {m['torch_threads']} torch threads, "
        f"device {m['device']}{gpu}, torch {m['torch']}, Python {m['python']}; "
        f"{m['rss_after_imports_mib']:,.0f} MiB resident after imports",
        f"{m['runtime']}; {checked}",
        f"data:    {s['dataset']} from {s['source']}: {s['n_train']} train / {s['n_test']} test images of "
        f"{'x'.join(map(str, s['image']))}, augmentation {s['augment']}",
        f"model:   {s['model']}({args}), {s['parameters']:,} parameters; curve: {s['curve']}",
        f"loaders: per-sample DataLoader tried with {tried}; best (highest median images/s) for training: "
        f"{best['train']['setting']}, for evaluation: {best['eval']['setting']}",
    ]
    p = s.get("paper")
    if p is None:
        lines.append("paper:   VGG16 figures off (on by default on CUDA; --paper-model measures them here)")
    else:
        lines.append(
            f"paper:   {p['model']} ({p['parameters']:,} parameters) on {p['data']}, {p['n_train']} train / "
            f"{p['n_test']} test, augmentation {p['augment']}; training {p['timed_batches']} batch(es) of "
            f"{p['train_batch']} after {p['warmup_batches']} warm-up (lr {p['lr']:g}, curve lr {p['curve_lr']:g}, "
            f"wd {p['wd']:g}); curve {p['curve']}; evaluation point at t={p['point']['t']:g} on {p['bn_model']} "
            f"(VGG16 has no BatchNorm), in batches of {p['eval_batch']}"
        )
    lines.append(
        f"method:  training {s['timed_batches']} batches of {s['train_batch']} after {s['warmup_batches']} "
        f"warm-up; evaluation {s['eval_images_per_run']} test images in batches of {s['eval_batch']}; "
        f"median of {s['repeats']} interleaved rounds [min–max]; ratios paired per round; "
        f"{m['bench_seconds']:.0f} s, other processes used {others} CPUs meanwhile",
    )
    return lines


def warning_lines(result: Result) -> list[str]:
    lines = []
    mismatches = result.setup.get("runtime_mismatches") or []
    if mismatches:
        lines.append("warning: not every section ran under the runtime: " + "; ".join(mismatches))
    busy = result.machine.get("other_processes_cpus")
    if busy is not None and busy > 0.25:
        lines.append(
            f"warning: other processes kept {busy:.1f} CPUs busy on average during the bench; the "
            "figures are low and noisy. Rerun on an idle machine."
        )
    return lines


def report(result: Result, console: Console) -> None:
    """A rich table on a terminal; aligned plain text otherwise (logs, pipes, CliRunner)."""
    lines = header_lines(result) + warning_lines(result)
    if console.is_terminal:
        for line in lines:
            console.print(line, highlight=False, markup=False)
        table = Table(title="modeconn bench")
        for column, justify in (("what", "left"), ("value", "right"), ("unit", "left"), ("range of runs", "right")):
            table.add_column(column, justify=justify)
        for f in result.figures.values():
            table.add_row(f.label, _fmt(f.value), f.unit, _spread(f))
        console.print(table)
        return
    width = max(len(f.label) for f in result.figures.values())
    for line in lines:
        print(line)
    print()
    for f in result.figures.values():
        spread = f"  [{_spread(f)}]" if len(f.runs) > 1 else ""
        print(f"{f.label:<{width}}  {_fmt(f.value):>9} {f.unit}{spread}")
