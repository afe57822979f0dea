"""Calibration of a classifier's predictions: expected calibration error and reliability bins.

Guo et al. (2017), "On Calibration of Modern Neural Networks", Sec. 2, on which the paper's temperature
scaling (Sec. 4) rests. The confidence of a prediction is its largest class probability. Split [0, 1] into
M equal-width bins I_m = ((m−1)/M, m/M] and let B_m be the predictions whose confidence falls in I_m; then

    acc(B_m)  = (1/|B_m|) Σ_{i∈B_m} 1[ŷ_i = y_i]
    conf(B_m) = (1/|B_m|) Σ_{i∈B_m} p̂_i
    ECE       = Σ_m (|B_m| / N) · |acc(B_m) − conf(B_m)|

Bins are closed on the right, as in Guo et al.: a confidence exactly on an inner edge m/M belongs to the bin
below it. torchmetrics' ``MulticlassCalibrationError`` closes them on the left ([lo, hi)), so the two agree
except for predictions that fall exactly on an edge (tested in tests/test_calibration.py).

A perfectly calibrated model has acc(B_m) = conf(B_m) in every bin (the diagonal of the reliability diagram).
Every input is a tensor of log-probabilities ``[N, K]``, as the pipeline stores them; sums run in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BINS = 15  # Guo et al.'s M


@dataclass(frozen=True)
class Reliability:
    """The bins of a reliability diagram: ``edges`` [M+1]; per bin its count, accuracy and mean confidence
    (accuracy and confidence are 0 in an empty bin, which has weight 0 in the ECE)."""

    edges: torch.Tensor  # (M+1,)
    count: torch.Tensor  # (M,) int64
    accuracy: torch.Tensor  # (M,) float64
    confidence: torch.Tensor  # (M,) float64

    @property
    def ece(self) -> float:
        n = self.count.sum().item()
        gap = (self.accuracy - self.confidence).abs()
        return float((self.count.double() * gap).sum().item() / n) if n else float("nan")

    def rows(self) -> list[dict]:
        """One dict per bin (lo, hi, count, accuracy, confidence): a table for a plot or a CSV."""
        return [
            {
                "lo": self.edges[m].item(),
                "hi": self.edges[m + 1].item(),
                "count": int(self.count[m]),
                "accuracy": self.accuracy[m].item(),
                "confidence": self.confidence[m].item(),
            }
            for m in range(len(self.count))
        ]


def reliability(logprobs: torch.Tensor, y: torch.Tensor, bins: int = BINS) -> Reliability:
    """The reliability bins of predictions ``logprobs`` [N, K] of labels ``y`` [N], ``bins`` equal-width bins."""
    if bins < 1:
        raise ValueError(f"bins must be ≥ 1, got {bins}")
    if logprobs.ndim != 2 or y.shape != logprobs.shape[:1]:
        raise ValueError(f"expected logprobs [N, K] and labels [N], got {tuple(logprobs.shape)} and {tuple(y.shape)}")
    # Probabilities (or logits) in place of log-probabilities would give an impossible ECE, not an error.
    if (logprobs > 1e-4).any():
        raise ValueError(
            f"logprobs has entries up to {logprobs.max().item():.4g} > 0, so these are not log-probabilities: "
            "pass log-probabilities, e.g. torch.log_softmax(logits, 1)"
        )
    k = logprobs.shape[1]
    if y.numel() and (y.min() < 0 or y.max() >= k):
        lo, hi = y.min().item(), y.max().item()
        raise ValueError(f"labels must be class indices in [0, {k}) for logprobs of {k} classes, got {lo}..{hi}")
    conf, pred = logprobs.detach().double().exp().max(1)  # (N,), (N,)
    correct = (pred == y.to(pred.device)).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    # bucketize(right=False) over the inner edges: index m for edges[m] < conf ≤ edges[m+1] (conf ≤ 1/M → 0).
    idx = torch.bucketize(conf.cpu(), edges[1:-1], right=False)  # (N,) in [0, M-1]
    count = torch.bincount(idx, minlength=bins)
    sum_acc = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, correct.cpu())
    sum_conf = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, conf.cpu())
    safe = count.clamp(min=1).double()
    return Reliability(edges, count, sum_acc / safe, sum_conf / safe)


def ece(logprobs: torch.Tensor, y: torch.Tensor, bins: int = BINS) -> float:
    """Expected calibration error (Guo et al. 2017, Eq. 3) with ``bins`` equal-width confidence bins."""
    return reliability(logprobs, y, bins).ece
