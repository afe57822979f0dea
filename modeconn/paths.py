"""Measuring networks at arbitrary points in weight space (paper, Sec. 3).

A point is a dict of weights for a template network (a point on a curve, on
the segment, on a grid in the plane, on a random ray). Measuring it means:
recalibrate the template's BatchNorm statistics at those weights, then run
the evaluation sets through ``functional_call`` in eval mode. The row of a
point holds the paper's measures, :data:`MEASURES`; the train loss includes
the regulariser, ``train_loss = train_nll + 0.5·wd·‖w‖²``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from . import ensemble
from .bn import recalibrate
from .data import EvalBatches
from .runtime import CPU, Runtime
from .train import Batches, predict
from .weights import sq_norm

MEASURES = ("train_loss", "train_nll", "train_error", "test_nll", "test_error")
VAL_MEASURES = ("val_nll", "val_error")  # where there is a validation split


def forward_at(template: nn.Module, weights: dict[str, torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x ↦ template(x)`` evaluated with ``weights`` in place of its parameters."""
    return lambda x: functional_call(template, weights, (x,), strict=False)


@torch.no_grad()
def at_point(
    template: nn.Module, weights: dict[str, torch.Tensor], bn_batches: Batches, runtime: Runtime = CPU
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The network at ``weights``, ready to evaluate: BatchNorm recalibrated there, template in eval mode."""
    forward = forward_at(template, weights)
    recalibrate(template, bn_batches, forward=forward, runtime=runtime)
    template.eval()
    return forward


@dataclass
class PointResult:
    train_nll: float
    train_error: float
    test_nll: float
    test_error: float
    test_logprobs: torch.Tensor  # (N_test, K)
    val_logprobs: torch.Tensor | None  # (N_val, K)
    l2: float  # ‖w‖²

    def row(self, wd: float) -> dict[str, float]:
        """The paper's measures at this point; ``wd`` is the weight decay of the regulariser 0.5·wd·‖w‖²."""
        return {
            "train_loss": self.train_nll + 0.5 * wd * self.l2,
            "train_nll": self.train_nll,
            "train_error": self.train_error,
            "test_nll": self.test_nll,
            "test_error": self.test_error,
        }


@torch.no_grad()
def measure(
    template: nn.Module, weights: dict[str, torch.Tensor], batches: EvalBatches, runtime: Runtime = CPU
) -> PointResult:
    """BN recalibration at ``weights``, then train/test (and val) predictions in eval mode."""
    forward = at_point(template, weights, batches.bn, runtime)
    train_lp, train_y = predict(forward, batches.train, runtime)
    test_lp, test_y = predict(forward, batches.test, runtime)
    val_lp = predict(forward, batches.val, runtime)[0] if batches.val is not None else None
    return PointResult(
        train_nll=ensemble.nll(train_lp, train_y),
        train_error=ensemble.error(train_lp, train_y),
        test_nll=ensemble.nll(test_lp, test_y),
        test_error=ensemble.error(test_lp, test_y),
        test_logprobs=test_lp,
        val_logprobs=val_lp,
        l2=float(sq_norm(weights)),
    )


def random_direction(size: int, seed: int) -> torch.Tensor:
    """A unit vector [size] in float64, uniformly distributed on the sphere, from its own seeded generator.

    Fig. 4's baseline: the point at distance d from ŵ1 along it is ŵ1 + d · direction.
    """
    d = torch.randn(size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return d / d.norm()


def nearest_t(rows: list[dict], targets, keys) -> dict[str, dict]:
    """For each target t, the ``keys`` of the row whose ``t`` is nearest, keyed ``t=0.10`` by the grid's t."""
    out = {}
    for target in targets:
        r = min(rows, key=lambda r: abs(r["t"] - target))
        out[f"t={r['t']:.2f}"] = {"t": r["t"], **{k: r[k] for k in keys}}
    return out
