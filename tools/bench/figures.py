"""A measured figure: one run per round, reported as the median; paired ratios of figures measured in the same
rounds, and the rotating order the rounds measure in."""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any


@dataclasses.dataclass
class Figure:
    """One measured quantity: a run per round, reported as the median (of the per-round ratios if paired)."""

    label: str
    unit: str
    runs: list[float]
    paired: bool = False  # a ratio of two figures measured in the same round, one per round

    @property
    def value(self) -> float:
        return statistics.median(self.runs)


@dataclasses.dataclass
class Result:
    machine: dict[str, Any]
    setup: dict[str, Any]
    figures: dict[str, Figure]

    def as_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "setup": self.setup,
            "figures": {
                k: {"label": f.label, "unit": f.unit, "value": f.value, "runs": f.runs, "paired": f.paired}
                for k, f in self.figures.items()
            },
        }


def paired_ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """One ratio per round: ``numerator[r] / denominator[r]``."""
    if len(numerator) != len(denominator):
        raise ValueError(f"paired ratios need one run of each per round, got {len(numerator)} and {len(denominator)}")
    return [a / b for a, b in zip(numerator, denominator)]


def paired_label(what: str, rounds: int) -> str:
    return f"{what}, paired, median [min–max] over {rounds} rounds"


def paired_figure(what: str, rounds: int, numerator: list[float], denominator: list[float]) -> Figure:
    """The ratio ``numerator / denominator`` of two figures measured in the same rounds, one per round."""
    return Figure(paired_label(what, rounds), "x", paired_ratios(numerator, denominator), paired=True)


def rotated(items: list, r: int) -> list:
    """``items`` starting at position r (mod its length): round r measures in this order."""
    k = r % len(items) if items else 0
    return items[k:] + items[:k]
