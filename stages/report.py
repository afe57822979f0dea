"""Stage report: metrics/report.md, the run's results in one page, regenerated from the metrics files.

What ran (dataset, model, epochs, seeds, device), the endpoints (Sec. 3), the
curve against the segment and the curve ensembles (Sec. 3–4, Fig. 2), the
ensembles of an endpoint with one path point (Fig. 4), the plane (Fig. 1),
and Ind / SSE / FGE at equal budgets (Sec. 5), with the figures embedded by
links relative to the report. Every file it reads is a dependency: a missing
one is an error naming the file and the stage that writes it.
"""

from __future__ import annotations

import os
import re
import statistics
from pathlib import Path

import typer

from modeconn import claims
from modeconn.errors import CheckpointError
from modeconn.io import atomic_write_text

from .kit.cli import ParamsOpt, console, stage_app
from .kit.config import read_sections
from .kit.records import read_json, run_info_path, seq, write_json

METRICS = Path("metrics")

# File (relative to the metrics folder) → the stage that writes it.
SOURCES = {
    "curve_train.json": "fit_curve",
    "curve.json": "eval_curve",
    "curve_along_t.png": "eval_curve",
    "path_ensembles.json": "path_ensembles",
    "path_ensembles.png": "path_ensembles",
    "plane.json": "plane",
    "plane_train_loss.png": "plane",
    "plane_test_error.png": "plane",
    "fge.json": "fge",
    "sse.json": "sse",
    "compare.json": "compare",
    "compare.md": "compare",
    "compare.png": "compare",
    "reliability.png": "compare",
}


def sources(metrics: Path, seeds) -> dict[Path, str]:
    """Every file the report reads (and links to) → the stage that writes it; each metrics JSON comes with
    its run information (``<name>.run.json``)."""
    files = {metrics / "endpoints" / f"seed_{s}.json": f"train_endpoint@{s}" for s in seeds}
    files.update({metrics / name: stage for name, stage in SOURCES.items()})
    for path, stage in list(files.items()):
        if path.suffix == ".json":
            files[run_info_path(path)] = stage
    return files


def check_sources(files: dict[Path, str]) -> None:
    missing = [(p, s) for p, s in files.items() if not p.is_file()]
    if missing:
        path, stage = missing[0]
        more = (
            f" (and {len(missing) - 1} more: {', '.join(str(p) for p, _ in missing[1:4])}…)" if len(missing) > 1 else ""
        )
        raise CheckpointError(
            f"{path} not found{more}: the report needs it. Run `dvc repro {stage}` (or `dvc repro` for everything)."
        )


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def links(markdown: str) -> list[str]:
    """The targets of the Markdown links and images of ``markdown`` (``[x](a.json)``, ``![y](b.png)``), in order."""
    return list(dict.fromkeys(LINK.findall(markdown)))


def load(path: Path, stage: str) -> tuple[dict, dict]:
    """A metrics file and its run information."""
    hint = f"Rerun `dvc repro {stage}`."
    return read_json(path, hint), read_json(run_info_path(path), hint)


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def num(x: float | None, digits: int = 4) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def headline(ends: dict, cur: dict, cmp: dict) -> dict:
    """The few numbers a reader compares first (metrics/headline.json): endpoint accuracy over seeds, the
    curve's and the segment's worst test error, the length ratio, and Ind / SSE / FGE test error at 1B."""
    accs = [e["test_accuracy"] for e in ends.values()]
    at_1b = cmp.get("1B", {})
    return {
        "endpoint_accuracy": {"mean": statistics.fmean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0},
        "curve_max_test_error": cur["curve"]["test_error"]["max"],
        "segment_max_test_error": cur["segment"]["test_error"]["max"],
        "length_ratio": cur["length"]["ratio"],
        "test_error_1B": {m: r["test_error"] for m, r in at_1b.items() if isinstance(r, dict) and r.get("members")},
        "val_error_1B": {
            m: r["val_error"]
            for m, r in cmp.get("val", {}).get("1B", {}).items()
            if isinstance(r, dict) and r["members"]
        },
    }


def verdicts(cur: dict, pe: dict, fge: dict, fge_run: dict, sse: dict, cmp: dict) -> list[claims.Verdict]:
    """The paper's claims that this run can test, each against this run's own numbers (modeconn.claims).

    Noise: the sample std over seeds of one network's test accuracy (Ind at 1B), where the run has several
    seeds (none with one seed: the sign decides, and the evidence says so). At 1B, where each seed has its own
    FGE run, FGE is the mean over those runs: against Ind's mean (noise: the larger std), and against SSE's one
    run (noise: FGE's std)."""
    c, s_, ens = cur["curve"], cur["segment"], cur["ensemble"]
    ends = (c["test_error"]["start"], c["test_error"]["end"])
    spread = cmp.get("1B_over_seeds", {})
    noise = spread["ind"]["std_accuracy"] if spread.get("ind", {}).get("n", 0) > 1 else None
    rows = list(pe["by_t"].values())
    out = [
        claims.curve_connects([c["test_error"]["max"]], ends),
        claims.segment_does_not([s_["test_error"]["max"]], ends),
        claims.curve_longer(cur["length"]["ratio"]),
        claims.curve_ensemble_beats_endpoints(1 - ens["curve"]["accuracy"], 1 - ens["endpoints"]["accuracy"], noise),
    ]
    if "curve_scaled" in ens:
        out.append(claims.temperature_helps(ens["curve"]["nll"], ens["curve_scaled"]["nll"]))
    out.append(
        claims.curve_points_differ(
            [r["curve_error"] for r in rows],
            [r["segment_error"] for r in rows],
            [r["random_error"] for r in rows],
            noise,
        )
    )
    shots = [int(n) for n in seq(fge_run.get("snapshots_per_run", {}))]
    one_snapshot = (
        f"each FGE run took {max(shots)} snapshot(s) (fge.cycle {fge_run.get('cycle')} in fge.epochs "
        f"{fge_run.get('epochs')}): no FGE ensemble to compare"
        if shots and max(shots) < 2
        else ""
    )
    budgets = [b for b in ("1B", "2B", "3B") if isinstance(cmp.get(b), dict)]
    replicates = all(spread.get(m, {}).get("n", 0) > 1 for m in ("fge", "ind"))
    for b in dict.fromkeys(budgets[:1] + budgets[-1:]):  # the smallest and the largest budget
        row = cmp[b]
        if not all(row.get(m, {}).get("members") for m in ("fge", "ind")):
            continue
        sse_error = row["sse"]["test_error"] if row.get("sse", {}).get("members") else None
        if b == "1B" and replicates:  # one FGE run and one network per seed: compare the means over seeds
            f, i = spread["fge"], spread["ind"]
            fge_error, how = 1 - f["mean_accuracy"], f"FGE: mean over {f['n']} runs"
            worst = max(f["std_accuracy"], i["std_accuracy"])
            rivals = [("Ind", 1 - i["mean_accuracy"], f"{how}, Ind over {i['n']} seeds", worst)]
            if sse_error is not None:
                rivals.append(("SSE", sse_error, f"{how}, SSE one run", f["std_accuracy"]))
        else:
            fge_error = row["fge"]["test_error"]
            rivals = [("Ind", row["ind"]["test_error"], "", noise)]
            if sse_error is not None:
                rivals.append(("SSE", sse_error, "", noise))
        for other, error, how_, spread_of in rivals:
            if one_snapshot:
                out.append(claims.not_tested(f"Sec. 5, Table 1: FGE beats {other} at {b}", one_snapshot))
            else:
                out.append(claims.fge_beats(fge_error, error, other, b, spread_of, how_))
    if one_snapshot:
        out.append(claims.not_tested("Sec. 5: consecutive FGE snapshots lie closer together than SSE's", one_snapshot))
    elif fge.get("mean_distance") is not None and sse.get("mean_distance") is not None:
        out.append(claims.fge_snapshots_closer(fge["mean_distance"], sse["mean_distance"]))
    return out


def claims_section(cur: dict, pe: dict, fge: dict, fge_run: dict, sse: dict, cmp: dict) -> list[str]:
    """The report's section that states, from this run's numbers, which of the paper's claims it shows."""
    L = [
        "## The paper's claims in this run",
        "",
        "Each verdict is drawn from this run's own numbers above (`modeconn.claims`): *shown*, *not shown*, "
        "*within noise* where the difference is smaller than the seed spread the row names (the std over the "
        "endpoint seeds of one network's test accuracy; for FGE at 1B, where each seed has an FGE run, the std of "
        "the compared means; with one seed there is none, and the sign decides), or *not tested* where the run "
        "cannot test the claim. A path connects when its error barrier (its worst test error minus the worse "
        f"endpoint's, not the barrier table's interpolated baseline) is at most {100 * claims.TOLERANCE:.0f} "
        "points.",
        "",
        "| claim (paper) | this run | verdict |",
        "|---|---|---|",
    ]
    for v in verdicts(cur, pe, fge, fge_run, sse, cmp):
        L.append(f"| {v.claim} | {v.evidence} | **{v.outcome}** |")
    return [*L, ""]


def warnings_section(runs: dict[str, dict]) -> list[str]:
    """The warnings the stages recorded in their run information (settings that did nothing useful), by stage."""
    lines = [f"- `{stage}`: {w}" for stage, info in runs.items() for w in seq(info.get("warnings", {}))]
    return ["## Warnings", "", "The stages of this run warned:", "", *lines, ""] if lines else []


WIDTH_FILES = ("width.md", "width.png")  # written by experiments/width/dvc.yaml's summary stage


def width_section(width: Path | None, rel) -> list[str]:
    """The width experiment (Sec. 4, Fig. 3) from its own pipeline's summary in ``width``, when it is there.

    Not a dependency of this pipeline: listing it would make `dvc repro` run the width experiment too."""
    if width is None or not all((width / name).is_file() for name in WIDTH_FILES):
        return []
    return [
        "## Width of the network (Sec. 4, Fig. 3)",
        "",
        "From the width experiment's own pipeline (`make width`, experiments/width/dvc.yaml), not from this run: "
        f"its figures are those of its last run ([width.md]({rel(width / 'width.md')})); after rerunning it, "
        "rerun `dvc repro -f report`.",
        "",
        (width / "width.md").read_text().strip(),
        "",
        f"![Barrier and length ratio against the width factor K]({rel(width / 'width.png')})",
        "",
    ]


def build(metrics: Path, out: Path, seeds, width: Path | None = None) -> tuple[str, dict]:
    """The report's Markdown (links relative to ``out``'s folder) and the headline metrics."""
    files = sources(metrics, seeds)
    check_sources(files)

    def rel(path: Path) -> str:
        return Path(os.path.relpath(path, out.parent)).as_posix()

    loaded = {s: load(metrics / "endpoints" / f"seed_{s}.json", f"train_endpoint@{s}") for s in seeds}
    ends = {s: m for s, (m, _) in loaded.items()}
    end_runs = {s: r for s, (_, r) in loaded.items()}
    (_, fit), (cur, cur_run), (pe, pe_run), (pl, pl_run), (fge, fge_run), (sse, sse_run), (cmp, cmp_run) = (
        load(metrics / name, SOURCES[name])
        for name in (
            "curve_train.json",
            "curve.json",
            "path_ensembles.json",
            "plane.json",
            "fge.json",
            "sse.json",
            "compare.json",
        )
    )
    first = end_runs[seeds[0]]
    devices = sorted(
        {r.get("device", "?") for r in (*end_runs.values(), fit, cur_run, pl_run, pe_run, fge_run, sse_run)}
    )
    precisions = sorted({r.get("precision", "?") for r in (*end_runs.values(), fit, fge_run, sse_run)})
    accs = [ends[s]["test_accuracy"] for s in seeds]
    std = statistics.stdev(accs) if len(accs) > 1 else 0.0
    args = ", ".join(f"{k}={v}" for k, v in first.get("model_args", {}).items())

    L = [
        "# modeconn run report",
        "",
        "Garipov et al. 2018, *Loss Surfaces, Mode Connectivity, and Fast Ensembling of DNNs*, reproduced by this "
        "pipeline. Generated by the `report` stage from the files in this folder; do not edit by hand.",
        "",
        "## What ran",
        "",
        f"- Dataset **{first['dataset']}** ({first.get('train_images', '?')} training images), model "
        f"**{first['model']}**({args}), device(s): {', '.join(devices)}, training precision(s): "
        f"{', '.join(precisions)}.",
        f"- Endpoints: seeds {', '.join(str(s) for s in seeds)}, {first['epochs']} epochs each (B = "
        f"{cmp_run['B']}), standard schedule.",
        f"- Curve: {fit['type']} with {fit['num_bends']} bends between seeds {seq(fit['endpoints'])[0]} and "
        f"{seq(fit['endpoints'])[1]}, {fit['epochs']} epochs ({fit['seconds']:.0f} s).",
        f"- Evaluation along t: {cur_run['num_points']} points, train measures on "
        f"{cur_run['train_samples']} images, test on {cur_run['test_samples']}.",
        f"- FGE: {fge_run['runs']} run(s) from epoch {fge_run['start_epoch']}, {fge_run['epochs']} epochs, cycle "
        f"{fge_run['cycle']} epochs, lr {fge_run['lr_1']} → {fge_run['lr_2']}. SSE: {sse_run['epochs']} epochs, "
        f"{sse_run['cycles']} cycles from scratch.",
        f"- Plane: {pl_run['grid_points']} × {pl_run['grid_points']} grid, margin {pl_run['margin']} "
        f"({pl_run['seconds']:.0f} s, {pl_run['seconds_per_point']:.2f} s per point).",
        "",
    ]
    runs = {f"train_endpoint@{s}": r for s, r in end_runs.items()}
    runs.update(fit_curve=fit, eval_curve=cur_run, path_ensembles=pe_run, plane=pl_run, fge=fge_run, sse=sse_run)
    resumed = [
        f"`{name}` after epoch {r['resumed_after_epoch']}" for name, r in runs.items() if r.get("resumed_after_epoch")
    ]
    if resumed:
        L += [
            f"- Resumed after a stop: {', '.join(resumed)} (its seconds include those of the epochs before the stop).",
            "",
        ]
    L += warnings_section({**runs, "compare": cmp_run})
    L += [
        "## Endpoints",
        "",
        "| seed | val accuracy | val NLL | test accuracy | test NLL | train loss | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in seeds:
        e = ends[s]
        L.append(
            f"| {s} | {pct(e.get('val_accuracy'))} | {num(e.get('val_nll'))} | {pct(e['test_accuracy'])} | "
            f"{num(e['test_nll'])} | {num(e['train_loss'])} | {end_runs[s]['seconds']:.0f} |"
        )
    L += [
        "",
        f"Test accuracy over {len(seeds)} seed(s): **{100 * statistics.fmean(accs):.2f} ± {100 * std:.2f}%** "
        "(mean ± sample std).",
        "",
    ]

    c, s_, ens = cur["curve"], cur["segment"], cur["ensemble"]
    L += [
        "## Curve against segment (Sec. 3, Fig. 2)",
        "",
        "| | curve | segment |",
        "|---|---|---|",
        *(
            [f"| max validation error | {pct(c['val_error']['max'])} | {pct(s_['val_error']['max'])} |"]
            if "val_error" in c
            else []
        ),
        f"| max test error | {pct(c['test_error']['max'])} | {pct(s_['test_error']['max'])} |",
        f"| mean test error over t | {pct(c['test_error']['mean_t'])} | {pct(s_['test_error']['mean_t'])} |",
        f"| max train loss | {num(c['train_loss']['max'])} | {num(s_['train_loss']['max'])} |",
        f"| length | {num(cur['length']['curve'], 2)} | {num(cur['length']['segment'], 2)} |",
        "",
        f"Endpoints' test error (after BN recalibration): {pct(c['test_error']['start'])} and "
        f"{pct(c['test_error']['end'])}. Curve length / segment length: **{cur['length']['ratio']:.2f}**.",
        "",
        f"Curve ensemble (Sec. 4, {ens['members']} points, averaging {cur_run['ensemble']}):",
        "",
        "| ensemble | val accuracy | val NLL | test accuracy | test NLL |",
        "|---|---|---|---|---|",
    ]
    ens_val = cur.get("ensemble_val", {})
    for key, label in (
        ("endpoints", "the two endpoints"),
        ("curve", "all curve points"),
        ("segment", "all segment points"),
    ):
        v = ens_val.get(key, {})
        L.append(
            f"| {label} | {pct(v.get('accuracy'))} | {num(v.get('nll'))} | {pct(ens[key]['accuracy'])} | "
            f"{num(ens[key]['nll'])} |"
        )
    if "curve_scaled" in ens:
        L += [
            f"| endpoints, temperature-scaled | (fitted here) | | {pct(ens['endpoints_scaled']['accuracy'])} | "
            f"{num(ens['endpoints_scaled']['nll'])} |",
            f"| curve points, temperature-scaled | (fitted here) | | {pct(ens['curve_scaled']['accuracy'])} | "
            f"{num(ens['curve_scaled']['nll'])} |",
        ]
    else:
        L += ["", "(No temperature scaling: the run has no validation split, `data.val_size` = 0.)"]
    L += ["", f"![Train loss and test error along t, curve and segment]({rel(metrics / 'curve_along_t.png')})", ""]
    if "barrier" in cur:  # max_t [f(t) − ((1 − t) f(0) + t f(1))] per path; "aligned": Ainsworth et al. 2023
        label = {"curve": "curve", "segment": "segment", "aligned": "aligned segment (ŵ2 permuted to ŵ1)"}
        L += [
            "## Barriers: curve, segment and the permutation-aligned segment",
            "",
            "Barrier of a measure f along a path: max over t of f(t) − ((1 − t) f(0) + t f(1)), against the "
            "straight interpolation of the endpoints' values (Entezari et al., Ainsworth et al.).",
            "",
            "| path | train loss barrier | test NLL barrier | test error barrier | max test error |",
            "|---|---|---|---|---|",
        ]
        for p, b in cur["barrier"].items():
            L.append(
                f"| {label.get(p, p)} | {num(b['train_loss'])} | {num(b['test_nll'])} | {pct(b['test_error'])} | "
                f"{pct(cur[p]['test_error']['max'])} |"
            )
        if "alignment" in cur:
            a = cur["alignment"]
            L += [
                "",
                f"Weight matching moved {a['moved_fraction']:.0%} of {a['hidden_units']} hidden units "
                f"({a['permutation_groups']} permutation groups, read from the traced graph); "
                f"‖ŵ2 − ŵ1‖ = {num(a['distance_before'], 2)} → ‖π(ŵ2) − ŵ1‖ = {num(a['distance_after'], 2)}.",
            ]
        L.append("")

    L += [
        "## Ensembles of an endpoint with one path point (Fig. 4)",
        "",
        f"Test error of the ensemble {{ŵ1, w(t)}}; ŵ1 alone: {pct(pe['endpoint_error'])}, both endpoints: "
        f"{pct(pe['endpoints_ensemble_error'])}. The random point is at the curve point's distance from ŵ1.",
        "",
        "| t | curve | segment | random direction |",
        "|---|---|---|---|",
    ]
    for row in pe["by_t"].values():
        L.append(
            f"| {row['t']:.2f} | {pct(row['curve_error'])} | {pct(row['segment_error'])} | {pct(row['random_error'])} |"
        )
    if "best_val" in pe:
        bv = pe["best_val"]
        L += [
            "",
            f"Best over t on the validation split: curve {pct(bv['curve'])}, segment {pct(bv['segment'])}, "
            f"random direction {pct(bv['random'])}.",
        ]
    L += ["", f"![Two-network ensemble error along t]({rel(metrics / 'path_ensembles.png')})", ""]

    pts, g, off = pl["points"], pl["grid"], pl["curve_off_plane"]
    L += [
        "## The plane of the endpoints and the bend (Fig. 1)",
        "",
        f"Grid α ∈ [{seq(pl_run['alpha'])[0]:.2f}, {seq(pl_run['alpha'])[1]:.2f}], "
        f"β ∈ [{seq(pl_run['beta'])[0]:.2f}, {seq(pl_run['beta'])[1]:.2f}] "
        f"(‖ŵ2 − ŵ1‖ = {pl['endpoint_distance']:.2f}); the curve "
        f"leaves the plane by at most {off['max_distance']:.3g} ({off['max_relative']:.2g} of ‖ŵ2 − ŵ1‖; "
        "≈ 0 for a quadratic Bezier).",
        "",
        "| | train loss | test error |",
        "|---|---|---|",
    ]
    for key, label in (("w1", "ŵ1"), ("w2", "ŵ2"), ("bend", "bend θ")):
        L.append(f"| {label} | {num(pts[key]['train_loss'])} | {pct(pts[key]['test_error'])} |")
    L += [
        f"| grid min | {num(g['train_loss']['min'])} | {pct(g['test_error']['min'])} |",
        f"| grid max | {num(g['train_loss']['max'])} | {pct(g['test_error']['max'])} |",
        "",
        f"![Train loss in the plane]({rel(metrics / 'plane_train_loss.png')})",
        f"![Test error in the plane]({rel(metrics / 'plane_test_error.png')})",
        "",
    ]

    L += [
        "## Ensembles at equal budgets (Sec. 5)",
        "",
        (metrics / "compare.md").read_text().strip(),
        "",
        "| method | runs | snapshots per run | mean distance between snapshots | single snapshot accuracy | "
        "final ensemble accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for name, r, info in (("FGE", fge, fge_run), ("SSE", sse, sse_run)):
        L.append(
            f"| {name} | {info['runs']} | {', '.join(str(n) for n in seq(info['snapshots_per_run']))} | "
            f"{num(r.get('mean_distance'), 2)} | {pct(r['snapshot_accuracy'])} | {pct(r['ensemble_accuracy'])} |"
        )
    L += [
        "",
        f"![Ensemble accuracy against training epochs]({rel(metrics / 'compare.png')})",
        "",
    ]
    if "start_accuracy" in fge:  # the network each FGE run starts from, before any FGE step (paper: ImageNet)
        L += [
            f"FGE's start networks, before any FGE step: test accuracy {pct(fge['start_accuracy'])}, NLL "
            f"{num(fge['start_nll'], 4)} (mean over runs) → the runs' final snapshot ensembles "
            f"{pct(fge['ensemble_accuracy'])}, NLL {num(fge['ensemble_nll'], 4)}.",
            "",
        ]
    if "swa_accuracy" in fge:  # SWA (Izmailov et al. 2018): each FGE run's snapshots averaged into one network
        L += [
            f"SWA: each FGE run's snapshots averaged into one network, BatchNorm recalibrated: test accuracy "
            f"{pct(fge['swa_accuracy'])} (mean over runs; the runs' snapshot ensembles: "
            f"{pct(fge['ensemble_accuracy'])}), ECE {pct(fge['swa_ece'])}.",
            "",
        ]
    L += [
        "Calibration of the ensembles at 1B on test (expected calibration error, 15 equal-width confidence bins; "
        "the ECE column of the table above):",
        "",
        f"![Reliability diagrams at 1B]({rel(metrics / 'reliability.png')})",
        "",
    ]
    L += claims_section(cur, pe, fge, fge_run, sse, cmp)
    L += width_section(width, rel)
    L += [
        "## Sources",
        "",
        "This report was generated from:",
        "",
    ]
    for path, stage in files.items():
        L.append(f"- [{path.relative_to(metrics).as_posix()}]({rel(path)}) (stage `{stage}`)")
    return "\n".join(L) + "\n", headline(ends, cur, cmp)


def main(
    params: Path = ParamsOpt,
    metrics: Path = typer.Option(METRICS, "--metrics", help="Folder of the metrics files the report reads."),
    out: Path = typer.Option(Path("metrics/report.md"), "--out", help="The report (Markdown)."),
    headline_json: Path = typer.Option(
        Path("metrics/headline.json"), "--headline", help="The headline metrics (the numbers to compare first)."
    ),
    width: Path = typer.Option(
        None, "--width", help="Folder of the width experiment's width.md and width.png, embedded when present."
    ),
) -> None:
    """Write the run report and the headline metrics from the metrics files (params: train.seeds)."""
    (train,) = read_sections(params, "train")
    text, head = build(metrics, out, list(train.seeds), width)
    atomic_write_text(out, text)
    write_json(headline_json, head)
    console.print(f"report of {len(links(text))} linked files → {out}; headline metrics → {headline_json}")


app = stage_app(main)

if __name__ == "__main__":
    app()
