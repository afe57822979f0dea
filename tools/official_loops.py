"""The paper's official code, the way it trains and evaluates, re-written as the benchmark's reference
(:mod:`tools.bench.official`).

``make bench`` compares modeconn with the code of Garipov et al. (github.com/timgaripov/dnn-mode-connectivity:
``utils.train``, ``utils.test``, ``utils.update_bn``, ``curves.CurveNet`` and its curve layers,
``eval_curve.py``). That code cannot run here as it is: it calls ``.cuda(async=True)`` (a syntax error since
Python 3.7) and has a hand-written curve network per architecture. This module does what it does, written
anew for any network built from ``Conv2d``, ``Linear`` and BatchNorm layers (every model of the bench):

- **training** (``utils.train``): a per-sample ``DataLoader``, each batch moved to the device, forward,
  cross-entropy (+ the curve's L2 term), ``zero_grad``, backward, ``step``, then ``loss.item()`` and the
  batch's correct count ``.item()``; plain SGD with its own weight decay, NCHW (the code sets no memory
  format);
- **curve training** (``CurveNet``): every layer holds ``num_bends`` copies of each parameter
  (``weight_0 … weight_{n−1}``); each forward draws t ~ U(0, 1), computes the Bernstein coefficients as
  tensors, and every layer forms its weight at t as Σ_j c_j θ_j and its ‖·‖² itself; the regulariser is
  0.5 · wd · Σ_layers ‖w_layer(t)‖²; SGD over the parameters that require grad, without weight decay;
- **one evaluation point** (``eval_curve.py``): the whole weight vector at t to numpy (for the arc length),
  ``update_bn`` (running statistics reset, momentum b / (n + b) per batch, train mode) over the training
  loader, then ``utils.test`` over the training and the test loader: eval mode, the forward at t *with
  autograd on* (the official evaluation has no ``torch.no_grad()``), NLL + regulariser and accuracy ``.item()``
  per batch. Its loaders have batch 128.

torchensemble's FGE epoch is the same loop as ``utils.train`` (a per-sample loader, per-batch ``to(device)``,
``zero_grad``/forward/cross-entropy/backward/``step``, ``.item()`` for its log); measured by hand, the two
are equal, so one reference stands for both.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modeconn.errors import ConfigError

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
LAYERS = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)


class Bezier(nn.Module):
    """The official coefficient layer: binom · t^k · (1 − t)^(n−1−k) as tensor operations on a 1-element t."""

    def __init__(self, num_bends: int):
        super().__init__()
        k = np.arange(num_bends)
        binom = [math.comb(num_bends - 1, int(i)) for i in k]
        self.register_buffer("binom", torch.tensor(binom, dtype=torch.float32))
        self.register_buffer("range", torch.arange(0, float(num_bends)))
        self.register_buffer("rev_range", torch.arange(float(num_bends - 1), -1, -1))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.binom * torch.pow(t, self.range) * torch.pow(1.0 - t, self.rev_range)


class PolyChain(nn.Module):
    """The official polygonal-chain coefficients: max(0, 1 − |t (n − 1) − k|)."""

    def __init__(self, num_bends: int):
        super().__init__()
        self.num_bends = num_bends
        self.register_buffer("range", torch.arange(0, float(num_bends)))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return torch.max(self.range.new([0.0]), 1.0 - torch.abs(t * (self.num_bends - 1) - self.range))


COEFFICIENTS = {"bezier": Bezier, "polychain": PolyChain}


class CurveLayer(nn.Module):
    """One layer of the official CurveNet: ``num_bends`` parameters per parameter of ``layer``.

    The coefficients at t are set by :class:`CurveNet` before each forward (the official layers take them
    as an argument); the weight at t and its squared norm are computed here, every forward.
    """

    def __init__(self, layer: nn.Module, num_bends: int, fixed: list[bool]):
        super().__init__()
        self.kind = layer
        self.names = [name for name, _ in layer.named_parameters(recurse=False)]
        for name in self.names:
            p = layer._parameters.pop(name)
            for j in range(num_bends):
                self.register_parameter(f"{name}_{j}", nn.Parameter(p.detach().clone(), requires_grad=not fixed[j]))
        self.num_bends = num_bends
        self.coeffs: torch.Tensor | None = None
        self.l2: torch.Tensor | float = 0.0

    def weights_t(self, coeffs: torch.Tensor) -> list[torch.Tensor]:
        out, self.l2 = [], 0.0
        for name in self.names:
            w = None
            for j in range(self.num_bends):
                term = getattr(self, f"{name}_{j}") * coeffs[j]
                if w is None:
                    w = term
                else:
                    w += term  # in place, as the official layers accumulate
            self.l2 = self.l2 + torch.sum(w**2)
            out.append(w)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = dict(zip(self.names, self.weights_t(self.coeffs)))
        m = self.kind
        if isinstance(m, nn.Conv2d):
            return F.conv2d(x, w["weight"], w.get("bias"), m.stride, m.padding, m.dilation, m.groups)
        if isinstance(m, nn.Linear):
            return F.linear(x, w["weight"], w.get("bias"))
        factor = 0.0
        if self.training and m.track_running_stats:
            m.num_batches_tracked += 1
            factor = 1.0 / m.num_batches_tracked.item() if m.momentum is None else m.momentum
        return F.batch_norm(
            x,
            m.running_mean,
            m.running_var,
            w.get("weight"),
            w.get("bias"),
            self.training or not m.track_running_stats,
            factor,
            m.eps,
        )


class CurveNet(nn.Module):
    """The official ``CurveNet`` (fixed endpoints, ``kind`` bezier or polychain) over a copy of ``template``.

    The endpoints are the ``start`` and ``end`` parameter dicts, the interior bends start on the segment
    (``init_linear``). Every parameterised module must be a Conv2d, Linear or BatchNorm layer.
    """

    def __init__(
        self,
        template: nn.Module,
        start: dict[str, torch.Tensor],
        end: dict[str, torch.Tensor],
        kind: str,
        num_bends: int,
    ):
        super().__init__()
        self.num_bends = num_bends
        fixed = [True] + [False] * (num_bends - 2) + [True]
        self.coeff_layer = COEFFICIENTS[kind](num_bends)
        self.net = copy.deepcopy(template)
        self.curve_layers: list[CurveLayer] = []
        for parent in list(self.net.modules()):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, LAYERS) and any(True for _ in child.parameters(recurse=False)):
                    layer = CurveLayer(child, num_bends, fixed)
                    setattr(parent, child_name, layer)
                    self.curve_layers.append(layer)
        for module in self.net.modules():
            if not isinstance(module, CurveLayer) and any(True for _ in module.parameters(recurse=False)):
                raise ConfigError(f"the official-style reference has no curve layer for {type(module).__name__}")
        # Endpoints and the linear initialisation of the bends (import_base_parameters, init_linear).
        prefixes = {id(layer): name for name, layer in self.net.named_modules()}
        with torch.no_grad():
            for layer in self.curve_layers:
                prefix = prefixes[id(layer)]
                for name in layer.names:
                    key = f"{prefix}.{name}"
                    a, b = start[key].float(), end[key].float()
                    for j in range(num_bends):
                        alpha = j / (num_bends - 1)
                        getattr(layer, f"{name}_{j}").copy_((1 - alpha) * a + alpha * b)
        self.l2: torch.Tensor | float = 0.0

    def weights(self, t: torch.Tensor) -> np.ndarray:
        """The whole weight vector at t as one numpy array (eval_curve's arc length)."""
        coeffs = self.coeff_layer(t)
        parts = [w for layer in self.curve_layers for w in layer.weights_t(coeffs)]
        return np.concatenate([w.detach().cpu().numpy().ravel() for w in parts])

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        if t is None:
            t = x.new(1).uniform_()
        coeffs = self.coeff_layer(t)
        for layer in self.curve_layers:
            layer.coeffs = coeffs
        out = self.net(x)
        self.l2 = sum(layer.l2 for layer in self.curve_layers)
        return out


def curve_regularizer(wd: float):
    """``curves.l2_regularizer``: 0.5 · wd · the CurveNet's Σ ‖w_layer(t)‖² of its last forward."""
    return lambda model: 0.5 * wd * model.l2


def batches_forever(loader: Batches) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from loader


def warm_then_time(
    model: nn.Module, stream: Iterator, train: Callable[[Iterator, int], float], warmup: int, n: int
) -> float:
    """``model`` in train mode, ``train(stream, warmup)`` untimed, then what ``train(stream, n)`` returns (its
    images/s). The stream is closed at the end, so a DataLoader's workers start in the warm-up and are gone
    before the next measurement."""
    model.train()
    try:
        train(stream, warmup)
        return train(stream, n)
    finally:
        stream.close()


class OfficialTrainer:
    """``utils.train`` over ``n`` batches of a per-sample DataLoader, after ``warmup`` untimed ones."""

    def __init__(self, model: nn.Module, optimizer, loader: Batches, device: torch.device, regularizer=None, warmup=3):
        self.model, self.optimizer, self.loader, self.device = model, optimizer, loader, device
        self.regularizer, self.warmup = regularizer, warmup

    def _train(self, stream: Iterator, n: int) -> float:
        start, images, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
        for x, y in itertools.islice(stream, n):
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            output = self.model(x)
            loss = F.cross_entropy(output, y)
            if self.regularizer is not None:
                loss = loss + self.regularizer(self.model)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.item() * x.size(0)
            pred = output.data.argmax(1, keepdim=True)
            correct += pred.eq(y.view_as(pred)).sum().item()
            images += x.size(0)
        if not math.isfinite(loss_sum):
            raise FloatingPointError("the official-style reference loop diverged (NaN loss)")
        return images / (time.perf_counter() - start)

    def run(self, n: int) -> float:
        return warm_then_time(self.model, batches_forever(self.loader), self._train, self.warmup, n)


def update_bn(loader: Batches, model: CurveNet, device: torch.device, **kwargs) -> int:
    """``utils.update_bn``: reset the running statistics, then one pass in train mode with momentum b / (n + b).

    Returns the number of images it ran (0 for a network without BatchNorm: the official code skips the pass)."""
    bns = [m for m in model.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    model.train()
    momenta = {bn: bn.momentum for bn in bns}
    for bn in bns:
        bn.reset_running_stats()
    seen = 0
    for x, _ in loader:
        x = x.to(device, non_blocking=True)
        b = x.size(0)
        for bn in bns:
            bn.momentum = b / (seen + b)
        model(x, **kwargs)
        seen += b
    for bn, momentum in momenta.items():
        bn.momentum = momentum
    return seen


def evaluate(loader: Batches, model: CurveNet, device: torch.device, regularizer, **kwargs) -> dict[str, float]:
    """``utils.test``: eval mode, autograd on as in the official code; NLL, loss and accuracy per batch."""
    model.eval()
    nll_sum = loss_sum = correct = images = 0.0
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        output = model(x, **kwargs)
        nll = F.cross_entropy(output, y)
        loss = nll.clone() + regularizer(model)
        nll_sum += nll.item() * x.size(0)
        loss_sum += loss.item() * x.size(0)
        pred = output.data.argmax(1, keepdim=True)
        correct += pred.eq(y.view_as(pred)).sum().item()
        images += x.size(0)
    return {"nll": nll_sum / images, "loss": loss_sum / images, "accuracy": 100.0 * correct / images, "images": images}


def point_speed(
    model: CurveNet, t: float, bn: Batches, train: Batches, test_batches: Batches, wd: float, device: torch.device
) -> tuple[float, dict[str, float]]:
    """Images/s of one point of ``eval_curve.py`` (weights to numpy, update_bn, test on train and test), and
    its test result."""
    regularizer = curve_regularizer(wd)
    start = time.perf_counter()
    at = torch.tensor([t], device=device)
    model.weights(at)
    images = update_bn(bn, model, device, t=at)
    on_train = evaluate(train, model, device, regularizer, t=at)
    on_test = evaluate(test_batches, model, device, regularizer, t=at)
    seconds = time.perf_counter() - start
    images += on_train["images"] + on_test["images"]
    return images / seconds, {"train": on_train, "test": on_test}
