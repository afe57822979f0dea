"""The run report: one run's results as one Markdown page, and the few headline numbers to compare first.

From the records each step of a run writes (plain dicts: its metrics and its run information), the report
states what ran, the endpoints (Sec. 3), the curve against the segment and the curve ensembles (Sec. 3–4,
Fig. 2), the barriers of the curve, the segment and the permutation-aligned segment, the ensembles of an
endpoint with one path point (Fig. 4), the plane (Fig. 1), Ind / SSE / FGE at equal budgets (Sec. 5), the
paper's claims judged on this run's own numbers (:mod:`modeconn.claims`) and, where given, the width
experiment (Sec. 4, Fig. 3). Figures are embedded by the links the caller gives (relative to the report).

    text = report.markdown(results, figures, sources)
    numbers = report.headline(results)
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from . import claims

# The figures the report embeds, by name (the caller maps each to its link): along t (Fig. 2), the
# two-network ensembles (Fig. 4), the planes (Fig. 1: of the curve, and through three networks), accuracy against
# budget (Fig. 5), reliability diagrams.
FIGURES = (
    "curve_along_t",
    "path_ensembles",
    "plane_train_loss",
    "plane_test_error",
    "plane_points_train_loss",
    "plane_points_test_error",
    "compare",
    "reliability",
    "curvature_along_t",
)


@dataclass(frozen=True)
class Results:
    """One run's records, as its steps wrote them (lists may be mappings by position: "0", "1", …).

    ``runs`` holds the run information of every step by the name the report gives it (the warnings and the
    resumed steps are named so), in order; the other fields are the records each section reads."""

    endpoints: dict[int, dict]  # seed → the endpoint's metrics (accuracy, NLL, train loss)
    endpoint_runs: dict[int, dict]  # seed → its run information (dataset, model, epochs, seconds)
    curve_train_run: dict  # the curve's training: type, bends, endpoints, epochs, seconds
    curve: dict  # the curve's evaluation along t: summaries, lengths, ensembles, barriers
    curve_run: dict
    path_ensembles: dict  # Fig. 4: ŵ1 ensembled with one point of a path, by t
    path_ensembles_run: dict
    plane: dict  # Fig. 1: the grid's and the marked points' values
    plane_run: dict
    fge: dict
    fge_run: dict
    sse: dict
    sse_run: dict
    compare: dict  # Ind / SSE / FGE at budgets 1B, 2B, … (and over seeds at 1B)
    compare_run: dict
    compare_table: str  # the budget comparison's own Markdown (its table and the spread over seeds)
    runs: dict[str, dict]
    plane_points: dict = field(default_factory=dict)  # Fig. 1 left: the plane through three networks
    plane_points_run: dict = field(default_factory=dict)
    barriers: dict = field(default_factory=dict)  # the barrier card of every path and pair (modeconn.barriers)
    curvature: dict = field(default_factory=dict)  # λ_max and tr(H) along each path (modeconn.curvature)
    simplexes: dict = field(default_factory=dict)  # seed → its simplex's summary (modeconn.simplex.SimplexMeasure)
    triangle: dict = field(default_factory=dict)  # the simplex of independent endpoints, measured alike


class Embedded(NamedTuple):
    """Another experiment's summary shown in the report: its Markdown, the link to it and to its figure."""

    text: str
    link: str
    figure: str


def _seq(value: Any) -> list:
    """A list as a record holds it: a list, or a mapping by position ("0", "1", …)."""
    return [value[k] for k in sorted(value, key=int)] if isinstance(value, dict) else list(value)


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def num(x: float | None, digits: int = 4) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def links(markdown: str) -> list[str]:
    """The targets of the Markdown links and images of ``markdown`` (``[x](a.json)``, ``![y](b.png)``), in order."""
    return list(dict.fromkeys(LINK.findall(markdown)))


def headline(r: Results) -> dict:
    """The few numbers a reader compares first: endpoint accuracy over seeds, the curve's and the segment's
    worst test error, the length ratio, and Ind / SSE / FGE test (and validation) error at 1B."""
    ends, cur, cmp = r.endpoints, r.curve, r.compare
    accs = [e["test_accuracy"] for e in ends.values()]
    at_1b = cmp.get("1B", {})
    return {
        "endpoint_accuracy": {"mean": statistics.fmean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0},
        "curve_max_test_error": cur["curve"]["test_error"]["max"],
        "segment_max_test_error": cur["segment"]["test_error"]["max"],
        "length_ratio": cur["length"]["ratio"],
        "test_error_1B": {m: x["test_error"] for m, x in at_1b.items() if isinstance(x, dict) and x.get("members")},
        "val_error_1B": {
            m: x["val_error"]
            for m, x in cmp.get("val", {}).get("1B", {}).items()
            if isinstance(x, dict) and x["members"]
        },
        **plane_points_headline(r.plane_points),
        **(barriers_headline(r.barriers) if r.barriers else {}),
        **curvature_headline(r.curvature),
        **simplex_headline(r.simplexes, r.triangle),
    }


def simplex_headline(simplexes: Mapping, triangle: dict) -> dict:
    """The mean test error over the sampled interior points of the trained simplexes (their mean over seeds) and of
    the simplex of independent endpoints, where the run has them (low inside a trained simplex, high inside the
    triangle: Benton et al. 2021)."""
    out = {}
    if simplexes:
        out["simplex_interior_test_error"] = statistics.fmean(
            x["interior"]["test_error"]["mean"] for x in simplexes.values()
        )
    if triangle:
        out["triangle_interior_test_error"] = triangle["interior"]["test_error"]["mean"]
    return out


def simplex_section(r: Results) -> list[str]:
    """Loss-surface simplexes (Benton et al. 2021): each trained simplex's volume, its vertices' and its sampled
    interior points' test error and their ensemble, beside the simplex of independently trained endpoints."""
    if not r.simplexes:
        return []
    x0 = next(iter(r.simplexes.values()))
    L = [
        "## Simplexes of low loss (Benton et al. 2021)",
        "",
        f"A simplex from each endpoint (its fixed vertex; the free ones trained with the volume regulariser), "
        f"measured at its vertices and at {x0['samples']} points drawn uniformly from it (Dirichlet(1), BatchNorm "
        "recalibrated at each point); their ensemble is ESPRO over that simplex (in the budget table above: the "
        "simplexes' points at equal budgets). The contrast: the simplex whose vertices are independent endpoints.",
        "",
        "| simplex | volume | vertices' test error (mean) | interior test error, mean ± std (max) | "
        "ensemble of the interior points |",
        "|---|---|---|---|---|",
    ]
    named = {f"from seed {s}": x for s, x in r.simplexes.items()}
    if r.triangle:
        named["independent endpoints"] = r.triangle
    for name, x in named.items():
        i = x["interior"]["test_error"]
        L.append(
            f"| {name} | {num(x['volume'], 3)} | {pct(x['vertex_mean']['test_error'])} | {pct(i['mean'])} ± "
            f"{pct(i['std'])} ({pct(i['max'])}) | {pct(x['interior_ensemble']['test_error'])} |"
        )
    return [*L, ""]


def plane_points_headline(pp: dict) -> dict:
    """Between the three networks of the plane through them: the test error at their centroid (Fig. 1 left: high
    between independent networks), where the run has that plane."""
    centroid = pp.get("points", {}).get("centroid")
    return {"plane_points_centroid_test_error": centroid["test_error"]} if centroid else {}


def verdicts(r: Results) -> list[claims.Verdict]:
    """The paper's claims that this run can test, each against this run's own numbers (modeconn.claims).

    Noise: the sample std over seeds of one network's test accuracy (Ind at 1B), where the run has several
    seeds (none with one seed: the sign decides, and the evidence says so). At 1B, where each seed has its own
    FGE run, FGE is the mean over those runs: against Ind's mean (noise: the larger std), and against SSE's one
    run (noise: FGE's std)."""
    cur, pe, fge, fge_run, sse, cmp = r.curve, r.path_ensembles, r.fge, r.fge_run, r.sse, r.compare
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
            [x["curve_error"] for x in rows],
            [x["segment_error"] for x in rows],
            [x["random_error"] for x in rows],
            noise,
        )
    )
    shots = [int(n) for n in _seq(fge_run.get("snapshots_per_run", {}))]
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


def what_ran(r: Results) -> list[str]:
    """Dataset, model, devices and precisions, then one line per step (endpoints, curve, evaluation, FGE and
    SSE, plane), and the steps that resumed after a stop."""
    seeds = list(r.endpoints)
    first, fit, cur_run, fge_run, sse_run, pl_run = (
        r.endpoint_runs[seeds[0]],
        r.curve_train_run,
        r.curve_run,
        r.fge_run,
        r.sse_run,
        r.plane_run,
    )
    runs = (*r.endpoint_runs.values(), fit, cur_run, pl_run, r.path_ensembles_run, fge_run, sse_run)
    devices = sorted({x.get("device", "?") for x in runs})
    precisions = sorted({x.get("precision", "?") for x in (*r.endpoint_runs.values(), fit, fge_run, sse_run)})
    args = ", ".join(f"{k}={v}" for k, v in first.get("model_args", {}).items())
    L = [
        "## What ran",
        "",
        f"- Dataset **{first['dataset']}** ({first.get('train_images', '?')} training images), model "
        f"**{first['model']}**({args}), device(s): {', '.join(devices)}, training precision(s): "
        f"{', '.join(precisions)}.",
        f"- Endpoints: seeds {', '.join(str(s) for s in seeds)}, {first['epochs']} epochs each (B = "
        f"{r.compare_run['B']}), standard schedule.",
        f"- Curve: {fit['type']} with {fit['num_bends']} bends between seeds {_seq(fit['endpoints'])[0]} and "
        f"{_seq(fit['endpoints'])[1]}, {fit['epochs']} epochs ({fit['seconds']:.0f} s).",
        f"- Evaluation along t: {cur_run['num_points']} points, train measures on "
        f"{cur_run['train_samples']} images, test on {cur_run['test_samples']}.",
        f"- FGE: {fge_run['runs']} run(s) from epoch {fge_run['start_epoch']}, {fge_run['epochs']} epochs, cycle "
        f"{fge_run['cycle']} epochs, lr {fge_run['lr_1']} → {fge_run['lr_2']}. SSE: {sse_run['epochs']} epochs, "
        f"{sse_run['cycles']} cycles from scratch.",
        f"- Plane: {pl_run['grid_points']} × {pl_run['grid_points']} grid, margin {pl_run['margin']} "
        f"({pl_run['seconds']:.0f} s, {pl_run['seconds_per_point']:.2f} s per point).",
        "",
    ]
    resumed = [
        f"`{name}` after epoch {x['resumed_after_epoch']}" for name, x in r.runs.items() if x.get("resumed_after_epoch")
    ]
    if resumed:
        L += [
            f"- Resumed after a stop: {', '.join(resumed)} (its seconds include those of the epochs before the stop).",
            "",
        ]
    return L


def warnings_section(runs: Mapping[str, dict]) -> list[str]:
    """The warnings the steps recorded in their run information (settings that did nothing useful), by step."""
    lines = [f"- `{name}`: {w}" for name, info in runs.items() for w in _seq(info.get("warnings", {}))]
    return ["## Warnings", "", "The stages of this run warned:", "", *lines, ""] if lines else []


def endpoints_section(r: Results) -> list[str]:
    """One row per seed, and the test accuracy over seeds (mean ± sample std)."""
    L = [
        "## Endpoints",
        "",
        "| seed | val accuracy | val NLL | test accuracy | test NLL | train loss | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for s, e in r.endpoints.items():
        L.append(
            f"| {s} | {pct(e.get('val_accuracy'))} | {num(e.get('val_nll'))} | {pct(e['test_accuracy'])} | "
            f"{num(e['test_nll'])} | {num(e['train_loss'])} | {r.endpoint_runs[s]['seconds']:.0f} |"
        )
    accs = [e["test_accuracy"] for e in r.endpoints.values()]
    std = statistics.stdev(accs) if len(accs) > 1 else 0.0
    return [
        *L,
        "",
        f"Test accuracy over {len(accs)} seed(s): **{100 * statistics.fmean(accs):.2f} ± {100 * std:.2f}%** "
        "(mean ± sample std).",
        "",
    ]


def curve_section(r: Results, figures: Mapping[str, str]) -> list[str]:
    """Sec. 3–4, Fig. 2: the curve against the segment, and the ensembles of their points."""
    cur = r.curve
    c, s_, ens = cur["curve"], cur["segment"], cur["ensemble"]
    L = [
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
        f"Curve ensemble (Sec. 4, {ens['members']} points, averaging {r.curve_run['ensemble']}):",
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
    return [*L, "", f"![Train loss and test error along t, curve and segment]({figures['curve_along_t']})", ""]


def barriers_section(r: Results) -> list[str]:
    """max_t [f(t) − ((1 − t) f(0) + t f(1))] per path, the permutation-aligned segment among them (Ainsworth
    et al. 2023), where the evaluation measured barriers."""
    cur = r.curve
    if "barrier" not in cur:
        return []
    label = {"curve": "curve", "segment": "segment", "aligned": "aligned segment (ŵ2 permuted to ŵ1)"}
    L = [
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
    return [*L, ""]


CARD_PATHS = {
    "segment": "segment",
    "aligned": "aligned segment",
    "aligned_repair": "aligned + REPAIR",
    "curve": "curve",
}


def _pm(mean: dict, std: dict | None, key: str, fmt) -> str:
    s = None if std is None else std.get(key)
    return fmt(mean[key]) + ("" if s is None else f" ± {fmt(s)}")


def barrier_card_lines(b: dict, level: int = 2) -> list[str]:
    """The barrier card (:mod:`modeconn.barriers`; the barriers stage's JSON ``b``) as one table: per path and BN
    treatment, the test error's and the train loss's worst value and both barriers, mean ± std over the pairs,
    and Frankle et al.'s verdict per pair; then REPAIR's effect on the aligned segment. ``level``: the heading's."""
    mean, std = b["card"]["mean"], b["card"].get("std", {})
    pairs, thr = [p for p in b["card"] if p not in ("mean", "std")], b["threshold"]
    L = [
        f"{'#' * level} Barrier card: every path, every pair of endpoints, each definition",
        "",
        f"Over the {len(pairs)} pair{'s' * (len(pairs) > 1)} {', '.join(pairs)} (mean ± std over pairs; the curve: its "
        "pair only). Worst = max_t f(t) (Garipov et al.); Frankle = max_t f(t) − ½(f(0) + f(1)) (Frankle et al. 2020, "
        "Ainsworth et al. 2023); Entezari = max_t [f(t) − ((1 − t) f(0) + t f(1))] (Entezari et al. 2022). Stable: "
        f"the test error's Frankle barrier below {pct(thr)}, in how many pairs.",
        "",
        "| path | BN | test error worst | test error Frankle | test error Entezari | stable | train loss worst "
        "| train loss Frankle | train loss Entezari |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path, by_bn in mean.items():
        for bn, m in by_bn.items():
            e, lo = m["test_error"], m["train_loss"]
            se, sl = (std.get(path, {}).get(bn, {}).get(k) for k in ("test_error", "train_loss"))
            stable = [b["card"][p][path][bn]["test_error"]["stable"] for p in pairs if path in b["card"].get(p, {})]
            L.append(
                f"| {CARD_PATHS.get(path, path)} | {bn} | {_pm(e, se, 'worst', pct)} | "
                f"{_pm(e, se, 'barrier_mean_ends', pct)} | {_pm(e, se, 'barrier_linear', pct)} | "
                f"{sum(map(bool, stable))}/{len(stable)} | {_pm(lo, sl, 'worst', num)} | "
                f"{_pm(lo, sl, 'barrier_mean_ends', num)} | {_pm(lo, sl, 'barrier_linear', num)} |"
            )
    if len(pairs) > 1:  # each pair's own card (the table above: their mean ± std)
        L += ["", "The test error's Frankle barrier per pair (✓ stable, ✗ not):", ""]
        L += [f"| path | BN | {' | '.join(pairs)} |", f"|---|---|{'---|' * len(pairs)}"]
        for path, by_bn in mean.items():
            for bn in by_bn:
                cells = []
                for p in pairs:
                    e = b["card"].get(p, {}).get(path, {}).get(bn, {}).get("test_error")
                    cells.append("—" if e is None else f"{pct(e['barrier_mean_ends'])} {'✓' if e['stable'] else '✗'}")
                L.append(f"| {CARD_PATHS.get(path, path)} | {bn} | {' | '.join(cells)} |")
    L.append("")
    if b["bn"]:
        L.append(
            'BN: `recalibrated` at each t on training images (for the aligned segment, REPAIR\'s "reset"), or '
            "`interpolated`, the two endpoints' running statistics interpolated with the weights (what evaluating "
            "the interpolated checkpoints gives)."
        )
    else:
        L.append("BN `none`: the network has no BatchNorm, so recalibrated and interpolated statistics coincide.")
    rep = b.get("repair", {}).get("test_error")
    if rep and rep.get("none") is not None:
        without = "with the endpoints' BN statistics interpolated" if b["bn"] else "without REPAIR"
        reset = f", {pct(rep['reset'])} with BN recalibrated (reset)" if rep.get("reset") is not None else ""
        r = rep.get("reduction")
        cut = "" if r is None else f" ({abs(r):.0%} {'lower' if r >= 0 else 'higher'})"
        L += [
            "",
            f"REPAIR (Jordan et al. 2023) on the aligned segment: mean test error barrier (Frankle) {pct(rep['none'])} "
            f"{without}{reset}, {pct(rep['repair'])} with REPAIR{cut}.",
        ]
        if rep.get("reset") is not None:
            L[-1] += (
                f" REPAIR against reset: {100 * (rep['repair'] - rep['reset']):+.2f} points (a recalibrated BatchNorm "
                "already gives its outputs nearly REPAIR's statistics)."
            )
    return [*L, ""]


def barriers_headline(b: dict) -> dict:
    """From the barrier card: the mean over pairs of the test error barrier max_t f(t) − ½(f(0) + f(1)) of the
    segment, the aligned segment and the aligned segment with REPAIR, each with BatchNorm recalibrated at each t
    (where the network has any: for the aligned segment, REPAIR's "reset"), and for a network with BatchNorm the
    aligned segment's with the endpoints' statistics interpolated (the plain interpolation of the checkpoints)."""
    mean = b["card"]["mean"]

    def pick(path: str, bn: str) -> float | None:
        return mean.get(path, {}).get(bn, {}).get("test_error", {}).get("barrier_mean_ends")

    treatment = "recalibrated" if b["bn"] else "none"
    out = {f"{p}_test_error": pick(p, treatment) for p in ("segment", "aligned", "aligned_repair")}
    if b["bn"]:
        out["aligned_bn_interpolated_test_error"] = pick("aligned", "interpolated")
    return {"barriers": out}


def path_ensembles_section(r: Results, figures: Mapping[str, str]) -> list[str]:
    """Fig. 4: the ensemble of ŵ1 with one point of the curve, of the segment and of a random direction, by t."""
    pe = r.path_ensembles
    L = [
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
    return [*L, "", f"![Two-network ensemble error along t]({figures['path_ensembles']})", ""]


def plane_section(r: Results, figures: Mapping[str, str]) -> list[str]:
    """Fig. 1: the grid in the plane of the endpoints and the bend, and the values at the marked points."""
    pl, pl_run = r.plane, r.plane_run
    pts, g, off = pl["points"], pl["grid"], pl["curve_off_plane"]
    L = [
        "## The plane of the endpoints and the bend (Fig. 1)",
        "",
        f"Grid α ∈ [{_seq(pl_run['alpha'])[0]:.2f}, {_seq(pl_run['alpha'])[1]:.2f}], "
        f"β ∈ [{_seq(pl_run['beta'])[0]:.2f}, {_seq(pl_run['beta'])[1]:.2f}] "
        f"(‖ŵ2 − ŵ1‖ = {pl['endpoint_distance']:.2f}); the curve "
        f"leaves the plane by at most {off['max_distance']:.3g} ({off['max_relative']:.2g} of ‖ŵ2 − ŵ1‖; "
        "≈ 0 for a quadratic Bezier).",
        "",
        "| | train loss | test error |",
        "|---|---|---|",
    ]
    for key, label in (("w1", "ŵ1"), ("w2", "ŵ2"), ("bend", "bend θ")):
        L.append(f"| {label} | {num(pts[key]['train_loss'])} | {pct(pts[key]['test_error'])} |")
    return [
        *L,
        f"| grid min | {num(g['train_loss']['min'])} | {pct(g['test_error']['min'])} |",
        f"| grid max | {num(g['train_loss']['max'])} | {pct(g['test_error']['max'])} |",
        "",
        f"![Train loss in the plane]({figures['plane_train_loss']})",
        f"![Test error in the plane]({figures['plane_test_error']})",
        "",
    ]


def plane_points_section(r: Results, figures: Mapping[str, str]) -> list[str]:
    """Fig. 1 left: the grid in the plane through three networks (by default the independent endpoints), beside
    the curve's plane, and the values at the three and at their centroid."""
    pp, run = r.plane_points, r.plane_points_run
    if not pp:
        return []
    pts, g = pp["points"], pp["grid"]
    sides = ", ".join(f"{k} {d:.2f}" for k, d in pp["distances"].items())
    worst = max(x["test_error"] for name, x in pts.items() if name != "centroid")
    between = f"their centroid {pct(pts['centroid']['test_error'])}, " if "centroid" in pts else ""
    L = [
        "## The plane through three networks (Fig. 1, left)",
        "",
        f"{run['grid_points']} × {run['grid_points']} grid, margin {run['margin']} ({run['seconds']:.0f} s); "
        f"distances {sides}. Test error at {between}at the worst of the three {pct(worst)}.",
        "",
        "| | train loss | test error |",
        "|---|---|---|",
    ]
    for name, x in pts.items():
        L.append(f"| {name} | {num(x['train_loss'])} | {pct(x['test_error'])} |")
    return [
        *L,
        f"| grid min | {num(g['train_loss']['min'])} | {pct(g['test_error']['min'])} |",
        f"| grid max | {num(g['train_loss']['max'])} | {pct(g['test_error']['max'])} |",
        "",
        f"![Train loss in the plane through three networks]({figures['plane_points_train_loss']})",
        f"![Test error in the plane through three networks]({figures['plane_points_test_error']})",
        "",
    ]


def curvature_headline(c: dict) -> dict:
    """The sharpness of the endpoints (λ_max, the mean at ŵ1 and ŵ2) and the largest λ_max along the curve, where
    the run measured the curvature (modeconn.curvature.curvature_summary)."""
    if not c:
        return {}
    return {
        "curvature_endpoint_top_eigenvalue": c["endpoints"]["top_eigenvalue"],
        "curvature_curve_max_top_eigenvalue": c["curve"]["top_eigenvalue"]["max"],
    }


def curvature_section(r: Results, figures: Mapping[str, str]) -> list[str]:
    """Curvature along the paths: λ_max and tr(H) of the train loss at the ends and their largest values along
    each path (t where), the settings of the estimates, and the figure of loss and curvature along t."""
    c, run = r.curvature, r.runs.get("curvature", {})
    if not c:
        return []
    e = c["endpoints"]
    note = "" if e["all_converged"] else " Some λ_max did not meet the tolerance: metrics/curvature.csv has residuals."
    bn = f", BN recalibrated at each on {run['bn_samples']} images" if run.get("bn_samples") else ""
    L = [
        "## Curvature along the paths",
        "",
        f"Top Hessian eigenvalue λ_max (Lanczos, ≤ {run['iters']} products, tolerance {run['tol']:g}) and trace tr(H) "
        f"(Hutchinson, {run['probes']} Rademacher probes) of the train loss (cross-entropy, no L2 term) over "
        f"{run['train_samples']} training images, at {run['num_points']} points of t per path{bn} "
        f"({run['seconds']:.0f} s). At the endpoints (mean): λ_max {e['top_eigenvalue']:.4g}, tr(H) "
        f"{e['trace']:.4g}.{note}",
        "",
        "| path | λ_max at t = 0, 1 | λ_max min (t) | λ_max max (t) | tr(H) at t = 0, 1 | tr(H) min (t) "
        "| tr(H) max (t) | train loss max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in (n for n in c if n != "endpoints"):
        lam, tr, loss = (c[name][m] for m in ("top_eigenvalue", "trace", "loss"))
        cells = [
            f"{x['start']:.4g}, {x['end']:.4g} | {x['min']:.4g} ({x['min_t']:.2f}) | {x['max']:.4g} ({x['max_t']:.2f})"
            for x in (lam, tr)
        ]
        L.append(f"| {name} | {cells[0]} | {cells[1]} | {loss['max']:.4f} |")
    return [*L, "", f"![Train loss, top Hessian eigenvalue and trace along t]({figures['curvature_along_t']})", ""]


def budgets_section(r: Results, figures: Mapping[str, str]) -> list[str]:
    """Sec. 5: Ind / SSE / FGE at equal budgets (the comparison's own table), FGE and SSE snapshots, FGE's
    start networks, SWA, and the reliability diagrams."""
    fge = r.fge
    L = [
        "## Ensembles at equal budgets (Sec. 5)",
        "",
        r.compare_table.strip(),
        "",
        "| method | runs | snapshots per run | mean distance between snapshots | single snapshot accuracy | "
        "final ensemble accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for name, x, info in (("FGE", fge, r.fge_run), ("SSE", r.sse, r.sse_run)):
        L.append(
            f"| {name} | {info['runs']} | {', '.join(str(n) for n in _seq(info['snapshots_per_run']))} | "
            f"{num(x.get('mean_distance'), 2)} | {pct(x['snapshot_accuracy'])} | {pct(x['ensemble_accuracy'])} |"
        )
    L += [
        "",
        f"![Ensemble accuracy against training epochs]({figures['compare']})",
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
    return [
        *L,
        "Calibration of the ensembles at 1B on test (expected calibration error, 15 equal-width confidence bins; "
        "the ECE column of the table above):",
        "",
        f"![Reliability diagrams at 1B]({figures['reliability']})",
        "",
    ]


def claims_section(r: Results) -> list[str]:
    """The section that states, from this run's numbers, which of the paper's claims it shows."""
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
    for v in verdicts(r):
        L.append(f"| {v.claim} | {v.evidence} | **{v.outcome}** |")
    return [*L, ""]


def width_section(width: Embedded | None) -> list[str]:
    """The width experiment (Sec. 4, Fig. 3) from its own pipeline's summary, when there is one."""
    if width is None:
        return []
    return [
        "## Width of the network (Sec. 4, Fig. 3)",
        "",
        "From the width experiment's own pipeline (`make width`, experiments/width/dvc.yaml), not from this run: "
        f"its figures are those of its last run ([width.md]({width.link})); after rerunning it, "
        "rerun `dvc repro -f report`.",
        "",
        width.text.strip(),
        "",
        f"![Barrier and length ratio against the width factor K]({width.figure})",
        "",
    ]


def bn_section(bn: Embedded | None) -> list[str]:
    """The BN experiment's barrier card (a ConvFC with BatchNorm: REPAIR against BN recalibration), when there is
    one."""
    if bn is None:
        return []
    return [
        "## With BatchNorm: REPAIR, reset and interpolated statistics",
        "",
        "From the BN experiment's own pipeline (`make bn`, experiments/bn/dvc.yaml), not from this run: a ConvFC with "
        f"BatchNorm ([barriers.md]({bn.link})); after rerunning it, rerun `dvc repro -f report`.",
        "",
        re.sub(r"^## ", "### ", bn.text.strip(), flags=re.M),  # its card's heading, one level down
        "",
    ]


def instability_section(instability: Embedded | None) -> list[str]:
    """The instability analysis (Frankle et al. 2020) from its own pipeline's summary, when there is one."""
    if instability is None:
        return []
    return [
        "## Instability: when does training become stable to SGD noise? (Frankle et al. 2020)",
        "",
        "From the instability experiment's own pipeline (`make instability`, experiments/instability/dvc.yaml), not "
        f"from this run ([instability.md]({instability.link})); after rerunning it, rerun `dvc repro -f report`.",
        "",
        instability.text.strip(),
        "",
        f"![Error barrier between the two children against the step k where they split]({instability.figure})",
        "",
    ]


def sources_section(sources: Sequence[tuple[str, str, str]]) -> list[str]:
    """The files the report was drawn from: (name, link, the step that writes it) each."""
    L = ["## Sources", "", "This report was generated from:", ""]
    return L + [f"- [{name}]({link}) (stage `{step}`)" for name, link, step in sources]


def markdown(
    r: Results,
    figures: Mapping[str, str],
    sources: Sequence[tuple[str, str, str]],
    width: Embedded | None = None,
    bn: Embedded | None = None,
    instability: Embedded | None = None,
) -> str:
    """The whole report: ``figures`` maps each name of :data:`FIGURES` to its link, ``sources`` lists the
    files read as (name, link, step), ``width`` the width experiment's summary, ``bn`` the BN experiment's
    barrier card and ``instability`` the instability experiment's summary where there are ones."""
    L = [
        "# modeconn run report",
        "",
        "Garipov et al. 2018, *Loss Surfaces, Mode Connectivity, and Fast Ensembling of DNNs*, reproduced by this "
        "pipeline. Generated by the `report` stage from the files in this folder; do not edit by hand.",
        "",
        *what_ran(r),
        *warnings_section(r.runs),
        *endpoints_section(r),
        *curve_section(r, figures),
        *barriers_section(r),
        *(barrier_card_lines(r.barriers) if r.barriers else []),
        *curvature_section(r, figures),
        *path_ensembles_section(r, figures),
        *plane_section(r, figures),
        *plane_points_section(r, figures),
        *budgets_section(r, figures),
        *simplex_section(r),
        *claims_section(r),
        *width_section(width),
        *bn_section(bn),
        *instability_section(instability),
        *sources_section(sources),
    ]
    return "\n".join(L) + "\n"


# The headline of a pipeline without a report (own/, the width experiment): the numbers `dvc exp show` lists.


def curve_headline(curve: dict) -> dict:
    """From eval_curve's summary: the worst test error along the curve, the segment and the aligned segment, the
    length ratio (named as in :func:`headline`), the curve's barriers (its worst value above the straight line
    between its ends), and the accuracy of the ensemble along the curve against that of the two endpoints."""
    out = {
        "curve_max_test_error": curve["curve"]["test_error"]["max"],
        "segment_max_test_error": curve["segment"]["test_error"]["max"],
    }
    if "aligned" in curve:
        out["aligned_max_test_error"] = curve["aligned"]["test_error"]["max"]
    barrier, ens = curve["barrier"]["curve"], curve["ensemble"]
    out["length_ratio"] = curve["length"]["ratio"]
    out["curve_barrier"] = {"test_error": barrier["test_error"], "train_loss": barrier["train_loss"]}
    out["ensemble_accuracy"] = {"curve": ens["curve"]["accuracy"], "endpoints": ens["endpoints"]["accuracy"]}
    return out


FGE_HEADLINE = ("start_accuracy", "ensemble_accuracy", "start_nll", "ensemble_nll")


def fge_headline(fge: dict) -> dict:
    """From FGE's summary: the ensemble's test accuracy and NLL, beside the start network's (measured before any
    FGE step) where it was measured."""
    return {"fge": {k: fge[k] for k in FGE_HEADLINE if k in fge}}


WIDTH_HEADLINE = ("length_ratio", "train_loss_barrier", "test_error_barrier")


def width_headline(width: dict) -> dict:
    """From the width experiment's summary: per width factor K (``k<K>``), the curve's length ratio and its
    barriers."""
    return {k: {key: row[key] for key in WIDTH_HEADLINE} for k, row in width.items() if k.startswith("k")}
