"""Figures of the paper, drawn from the pipeline's own tables (matplotlib, Agg backend)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .io import atomic_write_bytes  # noqa: E402


def save(fig, path: Path | str) -> None:
    """Write a figure as PNG atomically and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def accuracy_vs_epochs(rows: list[dict], budget: float, path: Path | str, title: str = "") -> None:
    """Ensemble test accuracy against training epochs, one line per method (paper, Fig. 5)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = [r for r in rows if r["method"] == method]
        ax.plot([r["epochs"] for r in pts], [100 * r["accuracy"] for r in pts], marker="o", ms=3, label=method)
    for k in range(1, int(max(r["epochs"] for r in rows) // budget) + 1):
        ax.axvline(k * budget, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("training epochs (all spent, pretraining included)")
    ax.set_ylabel("ensemble test accuracy (%)")
    ax.set_title(title or "Ensemble accuracy against training budget")
    ax.legend()
    ax.grid(alpha=0.3)
    save(fig, path)


def along_t(rows: list[dict], path: Path | str, title: str = "") -> None:
    """Train loss and test error along t for the curve and the segment (paper, Fig. 2)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, style in (("curve", "-"), ("segment", "--"), ("aligned", ":")):  # aligned: permuted ŵ2 (align.py)
        pts = [r for r in rows if r["path"] == name]
        if not pts:
            continue
        t = [r["t"] for r in pts]
        axes[0].plot(t, [r["train_loss"] for r in pts], style, marker=".", label=name)
        axes[1].plot(t, [100 * r["test_error"] for r in pts], style, marker=".", label=name)
    axes[0].set_ylabel("train loss (with L2 term)")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("test error (%)")
    for ax in axes:
        ax.set_xlabel("t")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    save(fig, path)


def curvature_along_t(rows: list[dict], path: Path | str, title: str = "") -> None:
    """Train loss, top Hessian eigenvalue and Hessian trace (± Hutchinson's standard error) along t, beside each
    other, for each path of ``rows`` (:func:`modeconn.curvature.curvature_paths`' tables, a ``path`` column added)."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for name, style in (("curve", "-"), ("segment", "--"), ("aligned", ":")):
        pts = [r for r in rows if r["path"] == name]
        if not pts:
            continue
        t = [r["t"] for r in pts]
        axes[0].plot(t, [r["loss"] for r in pts], style, marker=".", label=name)
        axes[1].plot(t, [r["top_eigenvalue"] for r in pts], style, marker=".", label=name)
        err = [0.0 if r["trace_stderr"] != r["trace_stderr"] else r["trace_stderr"] for r in pts]  # NaN: one probe
        axes[2].errorbar(t, [r["trace"] for r in pts], yerr=err, fmt=style, marker=".", capsize=2, label=name)
    axes[0].set_ylabel("train loss (cross-entropy)")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("top Hessian eigenvalue λ_max")
    axes[2].set_ylabel("Hessian trace (Hutchinson)")
    for ax in axes:
        ax.set_xlabel("t")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    save(fig, path)


def plane_contours(
    alpha,
    beta,
    values,
    points: dict,
    curve,
    segment,
    path: Path | str,
    label: str,
    title: str = "",
    levels: int = 20,
    aligned=None,
    aligned_label: str = "aligned segment (projection)",
    sides: bool = False,
    axis_labels: tuple[str, str] = ("α (along ŵ2 − ŵ1)", "β (towards the bend)"),
    markers: tuple[str, ...] = ("o", "o", "D", "s", "^"),
) -> None:
    """Contours of a measure over the plane of ŵ1, ŵ2 and the bend (paper, Fig. 1), or of any three points.

    ``values`` is [len(alpha), len(beta)] (values[i, j] at α_i, β_j); contour
    levels are log-spaced (a valley spanning orders of magnitude of loss stays
    visible). ``points`` maps a label to its (α, β); ``curve`` and ``segment``
    are [P, 2] projected paths (None: not drawn). ``sides``: the segments between the first three points (a
    triangle) drawn dashed. ``markers``: one per point (``o`` white, others orange). Axes are equal, as (α, β)
    are distances in weight space, unless the grid is more than 5 times longer one way than the other (a barely
    trained bend).
    """
    import numpy as np
    from matplotlib.colors import LogNorm

    alpha, beta = np.asarray(alpha, dtype=float), np.asarray(beta, dtype=float)
    z = np.asarray(values, dtype=float).T  # (len(beta), len(alpha)): rows are β, as contourf expects
    finite = z[np.isfinite(z)]
    lo = max(float(finite.min()), 1e-4 * float(finite.max()), 1e-12)
    hi = max(float(finite.max()), lo * 1.0001)
    z = np.clip(np.nan_to_num(z, nan=hi, posinf=hi), lo, hi)
    width, height = float(np.ptp(alpha)), float(np.ptp(beta))
    equal = height > 0 and 0.2 <= height / width <= 5
    ratio = min(max(height / width if equal else 0.6, 0.25), 1.2)
    fig, ax = plt.subplots(figsize=(7.5, 7.5 * ratio + 2.4))
    steps = np.geomspace(lo, hi, levels)
    cs = ax.contourf(alpha, beta, z, levels=steps, norm=LogNorm(lo, hi), cmap="viridis_r", extend="neither")
    ax.contour(alpha, beta, z, levels=steps, norm=LogNorm(lo, hi), colors="k", linewidths=0.3, alpha=0.5)
    bar = fig.colorbar(cs, ax=ax, format="%.3g", orientation="horizontal", pad=0.2, aspect=40)
    bar.set_label(label + " (log scale)")
    if segment is not None:
        seg = np.asarray(segment, dtype=float)
        ax.plot(seg[:, 0], seg[:, 1], "--", color="white", lw=1.8, label="segment")
    if sides:  # the triangle of the first three points: closed, one legend entry
        tri = np.asarray(list(points.values())[:3] + list(points.values())[:1], dtype=float)  # (4, 2)
        ax.plot(tri[:, 0], tri[:, 1], "--", color="white", lw=1.8, label="segments")
    if curve is not None:
        cur = np.asarray(curve, dtype=float)
        ax.plot(cur[:, 0], cur[:, 1], "-", color="tab:orange", lw=2.2, label="curve")
    if aligned is not None:  # [P, 2]: the projection of a path that leaves the plane (see ``aligned_label``)
        ali = np.asarray(aligned, dtype=float)
        ax.plot(ali[:, 0], ali[:, 1], ":", color="tab:red", lw=2.0, label=aligned_label)
        ax.plot(ali[-1:, 0], ali[-1:, 1], "x", color="tab:red", ms=8, mew=2, zorder=5)
        ax.set_xlim(alpha[0], alpha[-1])  # the grid, not the projection, sets the frame
        ax.set_ylim(beta[0], beta[-1])
    for (name, (a, b)), marker in zip(points.items(), markers):
        ax.plot([a], [b], marker, ms=8, mec="k", mfc="white" if marker == "o" else "tab:orange", zorder=5)
        ax.annotate(
            name,
            (a, b),
            textcoords="offset points",
            xytext=(6, 6),
            fontsize=9,
            color="k",
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7},
        )
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    if equal:
        ax.set_aspect("equal", adjustable="box")  # true geometry: (α, β) are distances in weight space
    else:
        ax.set_ylabel(f"{axis_labels[1][:-1]}; axes not to scale)")
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, fontsize=8, facecolor="0.8")
    fig.suptitle(title or f"{label} in the plane of the endpoints and the bend", fontsize=11)
    save(fig, path)


def plane_figures(grid: dict, train_png: Path | str, error_png: Path | str, where: str = "") -> None:
    """The plane's two contour figures (paper, Fig. 1) from ``grid`` (:meth:`modeconn.plane.PlaneResult.as_dict`):
    train loss to ``train_png``, test error to ``error_png``; ``where`` (the path, model and data) in the titles.
    An aligned segment in ``grid`` is drawn as its projection, labelled with how far it leaves the plane. A grid
    of three points (:meth:`modeconn.plane.PlaneGrid.as_dict`, no curve) is drawn with its triangle's sides."""
    if "curve" not in grid:
        return points_plane_figures(grid, train_png, error_png, where)
    pts = {"ŵ1": grid["coords"][0].tolist(), "ŵ2": grid["coords"][1].tolist(), "θ (bend)": grid["coords"][2].tolist()}
    aligned = {}
    if "aligned" in grid:  # a projection: the aligned segment leaves the plane (by t · dist(π(ŵ2)))
        off, scale = grid["aligned_off_plane"].max().item(), grid["coords"][1, 0].item()
        label = f"off the plane by up to {off:.3g} = {off / scale:.0%} of ‖ŵ2 − ŵ1‖; contours not its loss"
        aligned = {"aligned": grid["aligned"], "aligned_label": f"aligned segment, projected ({label})"}
    for m, png, label in (
        ("train_loss", train_png, "train loss (with L2 term)"),
        ("test_error", error_png, "test error"),
    ):
        title = f"{label.split(' (')[0].capitalize()} in the plane: {where}"
        curves = (grid["curve"], grid["segment"])
        plane_contours(grid["alpha"], grid["beta"], grid[m], pts, *curves, png, label, title=title, **aligned)


def points_plane_figures(grid: dict, train_png: Path | str, error_png: Path | str, where: str = "") -> None:
    """The two contour figures of the plane through three points (paper, Fig. 1 left) from ``grid``
    (:meth:`modeconn.plane.PlaneGrid.as_dict`): the three points, their triangle's sides and their centroid."""
    a, b, c = grid["points"]
    pts = dict(zip(grid["points"], grid["coords"].tolist()))
    if "centroid" in grid:
        pts["centroid"] = grid["centroid"].tolist()
    axes = (f"α (along {b} − {a})", f"β (towards {c})")
    for m, png, label in (
        ("train_loss", train_png, "train loss (with L2 term)"),
        ("test_error", error_png, "test error"),
    ):
        title = f"{label.split(' (')[0].capitalize()} in the plane of three networks: {where}"
        drawn = dict(title=title, sides=True, axis_labels=axes, markers=("o", "o", "o", "s"))
        plane_contours(grid["alpha"], grid["beta"], grid[m], pts, None, None, png, label, **drawn)


def path_ensembles(rows: list[dict], path: Path | str, endpoint_error: float | None = None, title: str = "") -> None:
    """Test error of the ensemble {ŵ1, point at t} on the curve, the segment and a random ray (paper, Fig. 4).

    ``rows`` have ``t`` and ``<path>_error`` (ensemble) and ``<path>_point_error`` (the point alone).
    """
    fig, ax = plt.subplots(figsize=(6.4, 4))
    t = [r["t"] for r in rows]
    for name, color in (("curve", "tab:orange"), ("segment", "tab:blue"), ("random", "tab:green")):
        ax.plot(
            t,
            [100 * r[f"{name}_error"] for r in rows],
            "-",
            marker=".",
            color=color,
            label=f"ensemble with {name} point",
        )
    if endpoint_error is not None:
        ax.axhline(100 * endpoint_error, color="grey", lw=0.8, ls=":", label="ŵ1 alone")
    ax.set_xlabel("t (position on the path; t = 0 is ŵ1)")
    ax.set_ylabel("two-network ensemble test error (%)")
    ax.set_title(title or "Ensemble of ŵ1 and one point of a path")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save(fig, path)


def reliability_diagrams(diagrams: dict, path: Path | str, title: str = "") -> None:
    """Reliability diagrams side by side, one panel per entry of ``diagrams`` (a label → a
    :class:`modeconn.calibration.Reliability`): the accuracy of each confidence bin as a bar at the bin,
    the diagonal of perfect calibration, the gap to the mean confidence shaded, the ECE in the panel's
    title (Guo et al. 2017, Fig. 1)."""
    n = len(diagrams)
    if not n:
        raise ValueError("reliability_diagrams needs at least one diagram")
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 3.6), squeeze=False, sharey=True)
    for ax, (label, rel) in zip(axes[0], diagrams.items()):
        lo, hi = rel.edges[:-1].numpy(), rel.edges[1:].numpy()
        width, full = hi - lo, rel.count.numpy() > 0
        ax.bar(
            lo[full],
            rel.accuracy.numpy()[full],
            width=width[full],
            align="edge",
            color="tab:blue",
            edgecolor="k",
            lw=0.4,
            label="accuracy",
        )
        gap = rel.confidence.numpy()[full] - rel.accuracy.numpy()[full]
        ax.bar(
            lo[full],
            gap,
            bottom=rel.accuracy.numpy()[full],
            width=width[full],
            align="edge",
            color="tab:red",
            alpha=0.3,
            edgecolor="tab:red",
            lw=0.4,
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_title(f"{label}: ECE {100 * rel.ece:.2f}%", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.suptitle(title or "Reliability diagrams", fontsize=11)
    save(fig, path)


def width_effect(rows: list[dict], path: Path | str, title: str = "") -> None:
    """Against the width factor K: the curve's train-loss barrier and its length / segment length (Fig. 3)."""
    k = [r["k"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].plot(k, [r["train_loss_barrier"] for r in rows], marker="o", label="train loss (with L2 term)")
    axes[0].plot(k, [r["train_nll_barrier"] for r in rows], marker="s", ls="--", label="train NLL")
    axes[0].axhline(0, color="grey", lw=0.5)
    axes[0].set_ylabel("max along curve − max of endpoints")
    axes[0].legend()
    axes[1].plot(k, [r["length_ratio"] for r in rows], marker="o")
    axes[1].set_ylabel("curve length / segment length")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(k, [str(v) for v in k])
        ax.set_xlabel("width factor K")
        ax.grid(alpha=0.3)
    fig.suptitle(title or "Width of the network against the curve's barrier and length")
    save(fig, path)
