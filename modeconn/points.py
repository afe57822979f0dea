"""Measuring a network at a point in weight space (paper, Sec. 3).

A point is the template network's parameters, as a dict name → tensor: a point on a curve
(``curve.weights(t)``), on the segment, on a grid in the plane, on a random ray, or a trained model's
``dict(model.named_parameters())``. Measuring it means: recalibrate the template's BatchNorm statistics at
those weights (DESIGN decision 2), then run the evaluation sets through ``functional_call`` in eval mode.
The row of a point holds the paper's measures, :data:`MEASURES`; the train loss includes the regulariser,
``train_loss = train_nll + 0.5·wd·‖w‖²``.

A point holds parameters only (DESIGN decision 11): a whole state dict would bring the buffers it was saved
with (BatchNorm running statistics), which override the ones recalibrated at the point, and the L2 term would
count them. :func:`check_parameters` refuses one and says what to pass instead.
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
from .errors import ModeconnError
from .runtime import CPU, Runtime
from .train import Batches, predict
from .weights import sq_norm

MEASURES = ("train_loss", "train_nll", "train_error", "test_nll", "test_error")
VAL_MEASURES = ("val_nll", "val_error")  # where there is a validation split


def check_parameters(template: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Raise a ModeconnError unless ``weights`` holds exactly the parameters of ``template`` (no buffers)."""
    params = dict(template.named_parameters())
    names = {name for name, _ in template.named_parameters(remove_duplicate=False)}  # tied ones by every name
    buffers = [k for k in weights if k not in names and k in {name for name, _ in template.named_buffers()}]
    if buffers:
        raise ModeconnError(
            f"a point to measure holds the network's parameters only, but this dict also holds {len(buffers)} "
            f"buffers ({', '.join(buffers[:3])}{', …' if len(buffers) > 3 else ''}): a whole state dict. Its "
            "buffers (BatchNorm running statistics) would override the statistics recalibrated at the point. "
            "Pass the parameters: curve.weights(t) for a point of a curve (not curve.state_at(t)), "
            "dict(model.named_parameters()) for a network (not model.state_dict())"
        )
    unknown = [k for k in weights if k not in names]
    missing = [k for k in params if k not in weights]
    if unknown or missing:
        raise ModeconnError(
            "a point to measure must hold every parameter of the network and nothing else: "
            + "; ".join(
                f"{what} {', '.join(names[:3])}{', …' if len(names) > 3 else ''}"
                for what, names in (("unknown", unknown), ("missing", missing))
                if names
            )
            + " (is it a point of another architecture?)"
        )


def forward_at(template: nn.Module, weights: dict[str, torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x ↦ template(x)`` evaluated with ``weights`` in place of its parameters."""
    return lambda x: functional_call(template, weights, (x,), strict=False)


@torch.no_grad()
def at_point(
    template: nn.Module, weights: dict[str, torch.Tensor], bn_batches: Batches, runtime: Runtime = CPU
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The network at the parameters ``weights``, ready to evaluate: BatchNorm recalibrated there, template in
    eval mode. A dict with buffers (a state dict) is refused (:func:`check_parameters`)."""
    check_parameters(template, weights)
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
    test_labels: torch.Tensor | None = None  # (N_test,)
    val_labels: torch.Tensor | None = None  # (N_val,)

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
    """BN recalibration at the parameters ``weights``, then train/test (and val) predictions in eval mode."""
    return score(at_point(template, weights, batches.bn, runtime), weights, batches, runtime)


@torch.no_grad()
def score(
    forward: Callable[[torch.Tensor], torch.Tensor],
    weights: dict[str, torch.Tensor],
    batches: EvalBatches,
    runtime: Runtime = CPU,
    *,
    val: bool = True,
) -> PointResult:
    """The network ``forward`` (ready to evaluate, its parameters ``weights``) predicts the train, test and, with
    ``val`` and where ``batches`` has one, val split, in that order; their measures and ‖weights‖²."""
    train_lp, train_y = predict(forward, batches.train, runtime)
    test_lp, test_y = predict(forward, batches.test, runtime)
    has_val = val and batches.val is not None
    val_lp, val_y = predict(forward, batches.val, runtime) if has_val else (None, None)
    return PointResult(
        train_nll=ensemble.nll(train_lp, train_y),
        train_error=ensemble.error(train_lp, train_y),
        test_nll=ensemble.nll(test_lp, test_y),
        test_error=ensemble.error(test_lp, test_y),
        test_logprobs=test_lp,
        val_logprobs=val_lp,
        l2=float(sq_norm(weights)),
        test_labels=test_y,
        val_labels=val_y,
    )
