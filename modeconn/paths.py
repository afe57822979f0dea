"""Measuring networks at arbitrary points in weight space.

A point is a dict of weights for a template network (a point on a curve,
on the segment, on a grid in the plane). Measuring it means: recalibrate the
template's BatchNorm statistics at those weights (paper, Sec. 3), then run
the evaluation sets through ``functional_call``. Used by ``eval_curve`` and
``plane`` alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn
from torch.func import functional_call

from . import ensemble
from .bn import recalibrate
from .train import predict

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def forward_at(template: nn.Module, weights: dict[str, torch.Tensor]):
    """``x ↦ template(x)`` evaluated with ``weights`` in place of its parameters."""
    return lambda x: functional_call(template, weights, (x,), strict=False)


@dataclass
class PointResult:
    train_nll: float
    train_error: float
    test_nll: float
    test_error: float
    test_logprobs: torch.Tensor  # (N_test, K)
    val_logprobs: torch.Tensor | None  # (N_val, K)
    l2: float  # ‖w‖²


@torch.no_grad()
def measure(template: nn.Module, weights: dict[str, torch.Tensor], *, bn_batches: Batches, train_batches: Batches,
            test_batches: Batches, val_batches: Batches | None, device: torch.device) -> PointResult:
    """BN recalibration at ``weights``, then train/test (and val) predictions in eval mode."""
    forward = forward_at(template, weights)
    recalibrate(template, bn_batches, forward=forward, device=device)
    template.eval()
    train_lp, train_y = predict(forward, train_batches, device)
    test_lp, test_y = predict(forward, test_batches, device)
    val_lp = predict(forward, val_batches, device)[0] if val_batches is not None else None
    return PointResult(
        train_nll=ensemble.nll(train_lp, train_y), train_error=1 - ensemble.accuracy(train_lp, train_y),
        test_nll=ensemble.nll(test_lp, test_y), test_error=1 - ensemble.accuracy(test_lp, test_y),
        test_logprobs=test_lp, val_logprobs=val_lp,
        l2=float(sum((w.float() ** 2).sum() for w in weights.values())),
    )
