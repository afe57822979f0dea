"""Ensembles as arithmetic over stored predictions (DESIGN decision 3).

Every member is a tensor of test-set log-probabilities ``[N, K]``. The paper
ensembles by averaging class probabilities (Sec. 4, 5); averaging logits is
offered as an option under that name. Temperature scaling (Guo et al. 2017),
used in Sec. 4 for curve points, divides a member's logits by a scalar T
fitted by NLL on held-out data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from . import calibration
from .errors import ConfigError

METHODS = ("probs", "logits")


def nll(logprobs: torch.Tensor, y: torch.Tensor) -> float:
    """Mean negative log-likelihood of the true labels. logprobs: [N, K], y: [N]."""
    return F.nll_loss(logprobs.float(), y).item()


def accuracy(logprobs: torch.Tensor, y: torch.Tensor) -> float:
    return (logprobs.argmax(1) == y).float().mean().item()


def error(logprobs: torch.Tensor, y: torch.Tensor) -> float:
    """1 − accuracy."""
    return 1 - accuracy(logprobs, y)


def scores(logprobs: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    return {"accuracy": accuracy(logprobs, y), "nll": nll(logprobs, y)}


def combine(members: Sequence[torch.Tensor], method: str = "probs") -> torch.Tensor:
    """Log-probabilities of the ensemble of ``members`` (each [N, K] log-probs).

    ``probs``: log of the mean probability (the paper). ``logits``: softmax of
    the mean log-probability (log-probs are logits up to a per-row constant).
    """
    if method not in METHODS:
        raise ConfigError(f"unknown ensemble method {method!r}; use one of {', '.join(METHODS)}")
    if not members:
        raise ValueError("an ensemble needs at least one member")
    stack = torch.stack([m.float() for m in members])  # (M, N, K)
    if method == "probs":
        return torch.logsumexp(stack, 0) - math.log(stack.shape[0])
    return F.log_softmax(stack.mean(0), dim=1)


def running(members: Sequence[torch.Tensor], y: torch.Tensor, method: str = "probs") -> list[dict]:
    """Accuracy and NLL of the ensemble of the first k members, for k = 1..M."""
    return [{"size": k, **scores(combine(members[:k], method), y)} for k in range(1, len(members) + 1)]


def scale(logprobs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-probabilities after dividing the logits by ``temperature``."""
    return F.log_softmax(logprobs.float() / temperature, dim=1)


def fit_temperature(
    logprobs: torch.Tensor, y: torch.Tensor, lo: float = 0.05, hi: float = 20.0, iters: int = 60
) -> float:
    """The temperature T minimising NLL of ``softmax(logits / T)`` on (logprobs, y).

    NLL is convex in β = 1/T (log-sum-exp of a linear function minus a linear
    one), so a golden-section search over β ∈ [1/hi, 1/lo] finds the optimum.
    """
    logits = logprobs.float()

    def f(beta: float) -> float:
        return F.cross_entropy(logits * beta, y).item()

    a, b = 1.0 / hi, 1.0 / lo
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return 1.0 / ((a + b) / 2)


def curve_ensembles(
    curve: Sequence[torch.Tensor],
    segment: Sequence[torch.Tensor],
    y: torch.Tensor,
    method: str = "probs",
    temperatures: Sequence[float] | None = None,
) -> dict:
    """The ensembles of Sec. 4 from the predictions at the t grid of a curve and of its segment.

    ``curve[0]`` and ``curve[-1]`` are the endpoints. Returns accuracy, NLL and expected calibration error
    (:func:`modeconn.calibration.ece`, 15 bins) of the ensembles of the two endpoints, of every curve point and
    of every segment point; with ``temperatures`` (one per curve point, fitted on held-out data), also of the
    temperature-scaled curve points and endpoints.
    """

    def rated(members: Sequence[torch.Tensor]) -> dict[str, float]:
        lp = combine(list(members), method)
        return {**scores(lp, y), "ece": calibration.ece(lp, y)}

    out: dict = {"members": len(curve)}
    for label, members in (("endpoints", [curve[0], curve[-1]]), ("curve", curve), ("segment", segment)):
        out[label] = rated(members)
    if temperatures is not None:
        scaled = [scale(lp, temp) for lp, temp in zip(curve, temperatures, strict=True)]
        out["curve_scaled"] = rated(scaled)
        out["endpoints_scaled"] = rated([scaled[0], scaled[-1]])
    return out
