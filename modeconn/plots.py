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
    for name, style in (("curve", "-"), ("segment", "--")):
        pts = [r for r in rows if r["path"] == name]
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
