"""The width experiment (paper, Sec. 4, Fig. 3): the curve's barrier and length against the width factor K.

A network family is scaled by K: the model arguments that ``scale`` names are multiplied by K, the others
stay (the paper's Fig. 3 scales the fully connected layers of its 3-conv + 3-FC network only). For each K two
endpoints are trained and joined by a curve; from each curve's evaluation (:func:`width_point`)

    barrier(K) = max_t L(φ_K(t)) − max(L(ŵ1), L(ŵ2)),   ratio(K) = ‖φ_K‖ / ‖ŵ2 − ŵ1‖,

and the paper's claim is that both fall as K grows. :func:`summarize` gathers one row per K (with the conv
and FC parameter counts of its network, so the table shows what K scaled), the metrics, and a Markdown table;
:func:`modeconn.plots.width_effect` draws the figure.

    widths = Widths("convfc", {"width": 8, "fc_width": 16}, scale=("fc_width",))
    summary = summarize(widths, {k: curve_metrics[k] for k in (1, 2, 4)}, num_classes=10, channels=1, size=28)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from .models import create_model

COUNTS = ("conv_params", "fc_params")  # describe the networks: in the table and the run information, not metrics


@dataclass(frozen=True)
class Widths:
    """A network family scaled by K: ``model`` with ``args``, every argument named in ``scale`` times K."""

    model: str
    args: dict
    scale: tuple[str, ...]

    def args_at(self, k: int) -> dict:
        """The model arguments of width factor ``k``: every key of ``scale`` multiplied by k."""
        return {key: v * k if key in self.scale else v for key, v in self.args.items()}

    @property
    def fixed(self) -> tuple[str, ...]:
        """The integer arguments that K leaves as they are (e.g. the conv ``width`` in the paper's setting)."""
        return tuple(
            key
            for key, v in self.args.items()
            if key not in self.scale and isinstance(v, int) and not isinstance(v, bool)
        )

    def describe(self) -> str:
        """What K does, in words: ``fc_width = K × 16; width = 2 at every K``."""
        base = ", ".join(str(self.args[s]) for s in self.scale)
        scaled = f"{', '.join(self.scale)} = K × " + (f"({base})" if len(self.scale) > 1 else base)
        fixed = ", ".join(f"{key} = {self.args[key]}" for key in self.fixed)
        return scaled + (f"; {fixed} at every K" if fixed else "")


def layer_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts of the conv layers and the fully connected layers of ``model`` (weights and biases;
    normalisation layers count in neither)."""

    def count(kinds: tuple[type[nn.Module], ...]) -> int:
        return sum(p.numel() for m in model.modules() if isinstance(m, kinds) for p in m.parameters(recurse=False))

    return {"conv_params": count((nn.Conv1d, nn.Conv2d, nn.Conv3d)), "fc_params": count((nn.Linear,))}


def width_point(k: float, curve: dict) -> dict[str, float]:
    """One point of the experiment from the summaries of a curve's evaluation.

    ``curve`` holds :func:`modeconn.path.path_summaries` of the curve (``train_loss``, ``train_nll``,
    ``test_error``) under ``"curve"`` and :func:`modeconn.path.length_ratio` under ``"length"`` (what
    :func:`modeconn.path.curve_metrics` returns). The barrier is the worst train loss along the curve minus the
    larger of the two endpoints' train losses, ``max_t L(φ(t)) − max(L(ŵ1), L(ŵ2))`` (0 when the curve is never
    worse than its ends); the same with the NLL alone (no 0.5·wd·‖w‖² term); and the length ratio
    ‖curve‖ / ‖ŵ2 − ŵ1‖.
    """
    c, length = curve["curve"], curve["length"]

    def barrier(measure: str) -> float:
        s = c[measure]
        return s["max"] - max(s["start"], s["end"])

    return {
        "k": k,
        "train_loss_barrier": barrier("train_loss"),
        "train_nll_barrier": barrier("train_nll"),
        "test_error_barrier": barrier("test_error"),
        "max_train_loss": c["train_loss"]["max"],
        "endpoint_train_loss": max(c["train_loss"]["start"], c["train_loss"]["end"]),
        "length_ratio": length["ratio"],
        "curve_length": length["curve"],
        "segment_length": length["segment"],
    }


@dataclass(frozen=True)
class WidthSummary:
    """The experiment against K: ``rows`` one per K in increasing order (:func:`width_point`,
    the curve's worst test error, the parameter counts), ``metrics`` the numbers to compare (scalars by
    ``k<K>``, and ``change`` from the smallest K to the largest), ``parameters`` the counts by ``k<K>``, and
    ``markdown`` the table."""

    rows: list[dict]
    metrics: dict
    parameters: dict
    markdown: str


def table(rows: list[dict], widths: Widths) -> str:
    """The Markdown table of ``rows``: every integer argument at each K (those K leaves first), the parameter
    counts, the barriers, the endpoints' train loss, the curve's worst test error and the length ratio."""
    names = [*widths.fixed, *widths.scale]
    lines = [
        f"Width experiment (Sec. 4, Fig. 3): {widths.model} with {widths.describe()}. "
        "Barrier: worst train loss along the Bezier curve minus the larger endpoint train loss.",
        "",
        "| K | " + " | ".join(names) + " | conv params | FC params | train loss barrier | train NLL barrier | "
        "endpoint train loss | curve max test error | length ratio |",
        "|---" * (8 + len(names)) + "|",
    ]
    for r in rows:
        args = widths.args_at(r["k"])
        lines.append(
            f"| {r['k']} | "
            + " | ".join(str(args[s]) for s in names)
            + f" | {r['conv_params']:,} | {r['fc_params']:,}"
            + f" | {r['train_loss_barrier']:.4f} | {r['train_nll_barrier']:.4f} | {r['endpoint_train_loss']:.4f} | "
            f"{100 * r['max_test_error']:.2f}% | {r['length_ratio']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def summarize(widths: Widths, curves: Mapping[int, dict], num_classes: int, channels: int, size: int) -> WidthSummary:
    """The width experiment from each K's curve evaluation (``curves``: K → the summaries along t that
    :func:`width_point` reads, and ``curve.test_error.max``); the networks are built for
    ``num_classes`` classes of ``channels`` × ``size`` × ``size`` images, only to count their parameters."""
    rows = []
    for k in sorted(curves):
        cur = curves[k]
        net = create_model(widths.model, num_classes, channels, size, **widths.args_at(k))
        rows.append(
            {**width_point(k, cur), "max_test_error": cur["curve"]["test_error"]["max"], **layer_parameters(net)}
        )
    metrics = {f"k{r['k']}": {key: v for key, v in r.items() if key not in ("k", *COUNTS)} for r in rows}
    first, last = rows[0], rows[-1]
    metrics["change"] = {  # smallest K to largest: the paper's claim is that both fall
        "train_loss_barrier": last["train_loss_barrier"] - first["train_loss_barrier"],
        "length_ratio": last["length_ratio"] - first["length_ratio"],
    }
    parameters = {f"k{r['k']}": {key: r[key] for key in COUNTS} for r in rows}
    return WidthSummary(rows, metrics, parameters, table(rows, widths))
