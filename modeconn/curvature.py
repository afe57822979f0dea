"""Curvature of the training loss at a point in weight space: the top Hessian eigenvalue and the Hessian trace.

The loss is the training loss at the parameters w, averaged over the given batches as the training loss is,

    L(w) = (1/N) Σ_b n_b · ℓ_b(w) + ½·wd·‖w‖²,

ℓ_b the loss of batch b (a mean over its n_b samples: cross-entropy of the logits by default), N = Σ_b n_b, and
H = ∇²L(w) its Hessian (P × P, P parameters). H is never formed: everything below needs only Hessian-vector
products v ↦ Hv (:class:`HessianOperator`), each one pass over the batches at the cost of a few
gradients.

- **Top eigenvalue, power iteration** (``method="power"``, PyHessian's): v_0 a seeded Gaussian unit vector, then

      v_{k+1} = H v_k / ‖H v_k‖,    λ_k = v_kᵀ H v_k  (the Rayleigh quotient),

  until the residual ‖H v_k − λ_k v_k‖ ≤ tol · |λ_k|: for a symmetric H some eigenvalue then lies within
  tol·|λ_k| of λ_k, and the Rayleigh quotient's own error is of the order of the residual squared over the
  spectral gap. Power iteration finds the eigenvalue of largest magnitude; where that one is negative (a
  saddle, the middle of a path over a barrier), a second power iteration on H − λ_k·I, whose spectrum is
  shifted to be ≥ 0 with λ_max − λ_k on top, gives the largest one, λ_max. So ``value`` is always the
  algebraically largest eigenvalue, the "sharpness".
- **Top eigenvalue, Lanczos** (``method="lanczos"``, the default): m steps build an orthonormal basis Q_m of
  the Krylov space span{v_0, Hv_0, …, H^{m−1} v_0} (fully reorthogonalised) in which H is the tridiagonal
  T_m = Q_mᵀ H Q_m; the largest eigenvalue θ of T_m (Ritz value, with eigenvector s) converges to λ_max much
  faster than power iteration, and β_m·|s_m| is its residual ‖H Q_m s − θ Q_m s‖, tested as above. It keeps
  the basis: one vector of P floats per step. Measured on the default ConvFC (1.8 M parameters, at initialisation, 1,024
  images): Lanczos met tol = 1e-3 in 24 products; power iteration had not in 100 (λ_max to 7e-4 by then).
- **Trace, Hutchinson**: tr(H) = E[zᵀ H z] for any random z with E[z zᵀ] = I. With m Rademacher probes
  (entries ±1, from a generator seeded ``seed``) the estimate is the mean of zᵀ H z and its standard error the
  sample standard deviation over √m (the variance of one probe is 2·Σ_{i≠j} H_ij²). A set of probes given
  explicitly with (1/m)·Σ z zᵀ = I (e.g. √P times each unit vector) gives the trace exactly.

This is the method of PyHessian (Yao, Gholami, Keutzer, Mahoney, "PyHessian: Neural Networks Through the Lens
of the Hessian", IEEE BigData 2020): power iteration and Hutchinson's estimator on Hessian-vector products over
a data set, averaged over its batches weighted by their sizes, with the network in eval mode.

Checked against (tests/test_curvature.py): the exact Hessian of ``torch.autograd.functional.hessian`` (float64)
on a small MLP, λ_max and trace to 1e-4 relative; and, on a convolutional network with BatchNorm, the Hessian
built from products taken PyHessian's way (``torch.autograd.grad`` with ``create_graph=True``, then the gradient
of ⟨g, v⟩: double backward, network in eval mode, batches weighted by size, written out in the test, not this
module's ``torch.func`` code), λ_max by Lanczos and by power iteration and the trace to 1e-4 relative.

Along a path (:func:`curvature_along`, :func:`curvature_paths`) each point has its BatchNorm recalibrated first, as
:func:`modeconn.path.measure_path` does; a point two paths share (a curve's endpoints and its segment's) is
measured once. :func:`curvature_summary` gives the numbers the report shows (:mod:`modeconn.report`).

How the products are taken (:class:`HessianOperator`):

- On any ``nn.Module`` through ``torch.func.functional_call`` with a dict of its PARAMETERS: a dict holding
  buffers too (a state dict) is refused (:func:`modeconn.points.check_parameters`; DESIGN decision 11) —
  recalibrate BatchNorm at the point first (:func:`modeconn.bn.recalibrate`), the products read the module's
  own running statistics. Or any function ``fn(params, x) -> logits``.
- In eval mode: BatchNorm normalises with its running statistics, so the loss is a function of w alone (in
  train mode a batch's statistics would depend on w too and the curvature on the batch size); dropout is off.
  The module's mode is restored after each product.
- ``hvp="forward"`` (default): forward-over-reverse, ``torch.func.jvp`` of ``torch.func.grad``, what PyTorch's
  documentation recommends for Hessian-vector products; ``hvp="reverse"``: reverse-over-reverse,
  ``torch.func.vjp`` of ``torch.func.grad`` (PyHessian's double backward), for a network with an operation
  that has no forward-mode derivative.
- In float32 whatever the runtime's precision: each product runs under ``torch.autocast(..., enabled=False)``,
  in the dtype of the parameters (float32 for every point modeconn makes), also when the caller is inside an
  autocast context: curvature is a difference of gradients, which bf16's 8-bit mantissa would mostly round
  away. The runtime's memory
  format (channels_last) applies to the input batches; BN recalibration before the products
  (:func:`curvature_along`) runs under the runtime's autocast as everywhere else.
- Data-parallel: each process passes its own shard of the batches; the products, the loss and the sample
  count are summed over the processes with :meth:`Runtime.all_sum` (one all-reduce of P + 2 numbers per
  product), so every rank gets the product of the whole data, and, starting from the same seeded vector,
  runs the same iteration. Pass the plain module (the template), not its DistributedDataParallel wrapper;
  :class:`Shard` gives a process its slice of every batch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp, vjp

from .curves import Curve
from .errors import ConfigError, ModeconnError
from .path import parameters_along
from .points import at_point, check_parameters
from .runtime import CPU, Runtime

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, y) -> mean loss over the batch
Network = nn.Module | Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]  # or fn(params, x)
Product = Callable[[torch.Tensor], torch.Tensor]  # a symmetric linear map R^P -> R^P

METHODS = ("power", "lanczos")
HVPS = ("forward", "reverse")


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The training loss of a batch (:func:`modeconn.train.cross_entropy_step`): mean cross-entropy."""
    return F.cross_entropy(logits, y)


class HessianOperator:
    """v ↦ H v for the Hessian H of the training loss at ``params`` over ``batches`` (module docstring).

    ``v`` and the product are flat vectors [P] in the order of ``params`` (each tensor's elements in logical
    order, also for channels_last ones). ``batches`` is iterated once per product, so it must be re-iterable
    and give the same batches at every pass (a list, an evaluation :class:`modeconn.data.Loader`), not an
    iterator nor a training loader, which reshuffles and augments. ``wd`` adds the regulariser ½·wd·‖w‖² to the
    loss (wd·v to each product). After a product, :attr:`loss` is L(w) over the batches (regulariser included).
    """

    def __init__(
        self,
        network: Network,
        params: dict[str, torch.Tensor],
        batches: Batches,
        *,
        loss: LossFn = cross_entropy,
        runtime: Runtime = CPU,
        wd: float = 0.0,
        hvp: str = "forward",
    ):
        if hvp not in HVPS:
            raise ConfigError(f"hvp {hvp!r} unknown: use 'forward' (forward-over-reverse) or 'reverse'")
        if iter(batches) is batches:
            raise ModeconnError(
                "the batches of a Hessian are iterated once per Hessian-vector product: pass a list of "
                "(x, y) or a Loader, not an iterator or generator"
            )
        if getattr(batches, "train", False) or getattr(batches, "augment", "none") not in (None, "none"):
            raise ModeconnError(
                "the batches of a Hessian must be the same at every pass, but this loader reshuffles or augments "
                "at every pass (a training loader): pass an evaluation loader (train=False, no augmentation), "
                "e.g. EvalBatches.train"
            )
        if not params:
            raise ModeconnError("a Hessian with respect to no parameters: the dict of parameters is empty")
        if isinstance(network, nn.Module):
            check_parameters(network, params)
            module = network
            self._forward = lambda p, x: functional_call(module, p, (x,), strict=False)
        else:
            module = None
            self._forward = network
        self.module = module
        self.params = {k: v.detach() for k, v in params.items()}
        self.names = list(self.params)
        self.shapes = [v.shape for v in self.params.values()]
        self.sizes = [v.numel() for v in self.params.values()]
        self.size = sum(self.sizes)
        first = next(iter(self.params.values()))
        self.dtype, self.device = first.dtype, first.device
        self.batches, self.loss_fn, self.runtime, self.wd, self.hvp = batches, loss, runtime, wd, hvp
        self.sq_norm = float(sum((v.double() ** 2).sum() for v in self.params.values()))  # ‖w‖²
        self.loss: float | None = None
        self.products = 0

    def unflat(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """The flat vector ``v`` [P] as a dict name → tensor shaped like the parameters."""
        return {
            name: part.reshape(shape).to(p.dtype)
            for name, part, shape, p in zip(self.names, v.split(self.sizes), self.shapes, self.params.values())
        }

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        tangents = self.unflat(v.to(self.device, self.dtype))
        total = torch.zeros(self.size + 2, dtype=self.dtype, device=self.device)  # Σ n_b·H_b v, Σ n_b·ℓ_b, N
        for x, y in self.batches:
            x, y = self.runtime.batch(x.to(self.device)), y.to(self.device)

            def batch_loss(p, x=x, y=y):
                value = self.loss_fn(self._forward(p, x), y)
                return value, value.detach()

            with self._products():
                if self.hvp == "forward":
                    _, hv, value = jvp(grad(batch_loss, has_aux=True), (self.params,), (tangents,), has_aux=True)
                else:
                    _, vjp_fn, value = vjp(grad(batch_loss, has_aux=True), self.params, has_aux=True)
                    (hv,) = vjp_fn(tangents)
            n = y.shape[0]
            total[: self.size] += n * torch.cat([hv[name].reshape(-1) for name in self.names])
            total[self.size] += n * value
            total[self.size + 1] += n
        self.runtime.all_sum(total)  # over the processes of a data-parallel run: each passed its shard
        count = total[-1].item()
        if count == 0:
            raise ModeconnError("the Hessian of the loss over no batches: the batches hold no sample")
        product = total[: self.size] / count + self.wd * v.to(self.device, self.dtype)
        self.loss = total[self.size].item() / count + 0.5 * self.wd * self.sq_norm
        if not (math.isfinite(self.loss) and torch.isfinite(product).all()):
            raise ModeconnError(
                f"the loss or its Hessian-vector product is not finite at this point (loss {self.loss}): "
                "the network diverges there"
            )
        self.products += 1
        return product

    def top_eigenvalue(
        self, *, method: str = "lanczos", iters: int = 100, tol: float = 1e-3, seed: int = 0
    ) -> TopEigenvalue:
        """λ_max of this Hessian: :func:`top_eigenvalue` on R^:attr:`size`, its dtype and device."""
        return top_eigenvalue(
            self, self.size, method=method, iters=iters, tol=tol, seed=seed, dtype=self.dtype, device=self.device
        )

    def trace(self, *, probes: int | torch.Tensor = 100, seed: int = 0) -> TraceEstimate:
        """Hutchinson's tr(H) of this Hessian: :func:`hutchinson_trace` on R^:attr:`size`, its dtype and device."""
        return hutchinson_trace(self, self.size, probes=probes, seed=seed, dtype=self.dtype, device=self.device)

    @contextlib.contextmanager
    def _products(self):
        """Eval mode (BN running statistics, no dropout) and float32: autocast off, whatever encloses it."""
        was_training = self.module.training if self.module is not None else None
        try:
            if self.module is not None:
                self.module.eval()
            with torch.autocast(self.device.type, enabled=False):
                yield
        finally:
            if self.module is not None:
                self.module.train(was_training)


@dataclass(frozen=True)
class TopEigenvalue:
    """The largest eigenvalue λ_max of a symmetric operator and its eigenvector."""

    value: float  # λ_max, the algebraically largest eigenvalue
    vector: torch.Tensor  # (P,) unit vector v with H v ≈ λ_max v
    residual: float  # ‖H v − λ_max v‖
    products: int  # operator products spent
    converged: bool  # residual ≤ tol · |largest-magnitude eigenvalue| within the products allowed


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson's estimate of tr(H): the mean of zᵀ H z over the probes and its standard error."""

    mean: float
    stderr: float  # sample standard deviation of zᵀ H z over √probes (nan with one probe)
    probes: int
    samples: torch.Tensor  # (probes,) float64, zᵀ H z of each probe


def _start_vector(size: int, seed: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """A unit Gaussian vector drawn on the CPU from a generator seeded ``seed``: the same on every device and
    every process, and no draw from the global random streams."""
    v = torch.randn(size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (v / v.norm()).to(device=device, dtype=dtype)


def _power(product: Product, v: torch.Tensor, iters: int, tol: float, shift: float = 0.0, scale: float = 0.0):
    """Power iteration on (H − shift·I) from unit ``v``; returns (λ of H, v, residual, products, converged).
    The stopping rule is residual ≤ tol·max(|λ|, scale)."""
    value, residual = 0.0, math.inf
    for k in range(1, iters + 1):
        hv = product(v)
        value = torch.dot(v, hv).item()  # Rayleigh quotient of H (‖v‖ = 1)
        residual = (hv - value * v).norm().item()
        if residual <= tol * max(abs(value), scale):
            return value, v, residual, k, True
        w = hv - shift * v
        norm = w.norm()
        if norm == 0:  # v is an eigenvector of eigenvalue `shift` exactly (H = 0 on it)
            return value, v, residual, k, residual == 0
        v = w / norm
    return value, v, residual, iters, False


def _lanczos(product: Product, v: torch.Tensor, iters: int, tol: float):
    """Lanczos with full reorthogonalisation from unit ``v``; returns (λ_max, v, residual, products, converged).
    Keeps one vector [P] per step taken (the basis Q_m), nothing for the steps not needed."""
    basis: list[torch.Tensor] = []  # orthonormal q_0 … q_j, each (P,)
    alphas, betas = [], []  # T's diagonal and off-diagonal
    q, steps = v, min(iters, v.numel())
    for j in range(steps):
        basis.append(q)
        w = product(q)
        alphas.append(torch.dot(q, w).item())
        for _ in range(2):  # Gram-Schmidt against every q_i, twice ("twice is enough") to stay orthogonal
            for q_i in basis:
                w = w - torch.dot(q_i, w) * q_i
        beta = w.norm().item()
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            t += torch.diag(off, 1) + torch.diag(off, -1)
        evals, evecs = torch.linalg.eigh(t)  # (j+1,), (j+1, j+1)
        theta, s = evals[-1].item(), evecs[:, -1].tolist()
        residual = beta * abs(s[-1])  # ‖H Q s − θ Q s‖
        scale = evals.abs().max().item()
        done = residual <= tol * scale or beta <= 1e-12 * max(scale, 1e-30) or j + 1 == v.numel()
        if done or j + 1 == steps:
            vector = sum(s_i * q_i for s_i, q_i in zip(s, basis))  # Q s, the Ritz vector
            return theta, vector / vector.norm(), residual, j + 1, done
        betas.append(beta)
        q = w / beta
    raise AssertionError("unreachable")


def top_eigenvalue(
    product: Product,
    size: int,
    *,
    method: str = "lanczos",
    iters: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> TopEigenvalue:
    """λ_max of the symmetric operator ``product`` on R^``size`` (module docstring: power iteration or Lanczos).

    ``iters`` bounds the products of each power iteration (two where the first finds a negative eigenvalue of
    largest magnitude) or the Lanczos steps; ``tol`` is the residual allowed relative to the largest magnitude
    of an eigenvalue; ``seed`` draws the start vector. Not converging within ``iters`` is no error:
    :attr:`TopEigenvalue.converged` says so.
    """
    if method not in METHODS:
        raise ConfigError(f"method {method!r} unknown: use one of {', '.join(METHODS)}")
    if iters < 1:
        raise ConfigError(f"iters must be at least 1, got {iters}")
    v = _start_vector(size, seed, dtype, device)
    if method == "lanczos":
        value, vector, residual, products, converged = _lanczos(product, v, iters, tol)
        return TopEigenvalue(value, vector, residual, products, converged)
    value, vector, residual, products, converged = _power(product, v, iters, tol)
    if value < 0:  # the largest magnitude is a negative eigenvalue: shift the spectrum to find λ_max on top
        scale = abs(value)
        top, vector, residual, more, converged_top = _power(
            product, _start_vector(size, seed + 1, dtype, device), iters, tol, shift=value, scale=scale
        )
        value, products, converged = top, products + more, converged and converged_top
    return TopEigenvalue(value, vector, residual, products, converged)


def hutchinson_trace(
    product: Product,
    size: int,
    *,
    probes: int | torch.Tensor = 100,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> TraceEstimate:
    """tr(H) of the symmetric operator ``product`` on R^``size`` by Hutchinson's estimator (module docstring).

    ``probes``: how many Rademacher probes (drawn with ``seed``, one at a time on the CPU: the same on every
    device and process), or the probe vectors themselves as a tensor [m, P].
    """
    if isinstance(probes, torch.Tensor):
        if probes.dim() != 2 or probes.shape[1] != size:
            raise ConfigError(f"probe vectors must be a tensor [m, {size}], got {tuple(probes.shape)}")
        vectors = probes
    else:
        if probes < 1:
            raise ConfigError(f"probes must be at least 1, got {probes}")
        vectors = None
    m = vectors.shape[0] if vectors is not None else probes
    generator = torch.Generator().manual_seed(seed)
    samples = torch.empty(m, dtype=torch.float64)
    for i in range(m):
        z = vectors[i] if vectors is not None else torch.randint(0, 2, (size,), generator=generator) * 2 - 1
        z = z.to(device=device, dtype=dtype)
        samples[i] = torch.dot(z, product(z)).item()
    stderr = samples.std().item() / math.sqrt(m) if m > 1 else math.nan
    return TraceEstimate(samples.mean().item(), stderr, m, samples)


def hessian_eigenvalue(
    network: Network,
    params: dict[str, torch.Tensor],
    batches: Batches,
    *,
    loss: LossFn = cross_entropy,
    runtime: Runtime = CPU,
    wd: float = 0.0,
    method: str = "lanczos",
    iters: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    hvp: str = "forward",
) -> TopEigenvalue:
    """The top eigenvalue λ_max of the Hessian of the training loss at ``params`` over ``batches``.

    ``network``: an ``nn.Module`` (run through ``functional_call`` with ``params``, its parameters only: a
    state dict is refused) or a function ``fn(params, x) -> logits``. BatchNorm must have been recalibrated at
    ``params`` (:func:`curvature_along` does it); the products run in eval mode and float32 (module
    docstring). The other arguments are those of :class:`HessianOperator` and :func:`top_eigenvalue`.
    """
    op = HessianOperator(network, params, batches, loss=loss, runtime=runtime, wd=wd, hvp=hvp)
    return op.top_eigenvalue(method=method, iters=iters, tol=tol, seed=seed)


def hessian_trace(
    network: Network,
    params: dict[str, torch.Tensor],
    batches: Batches,
    *,
    loss: LossFn = cross_entropy,
    runtime: Runtime = CPU,
    wd: float = 0.0,
    probes: int | torch.Tensor = 100,
    seed: int = 0,
    hvp: str = "forward",
) -> TraceEstimate:
    """Hutchinson's estimate of the trace of the Hessian of the training loss at ``params`` over ``batches``
    (mean and standard error); arguments as in :func:`hessian_eigenvalue` and :func:`hutchinson_trace`."""
    op = HessianOperator(network, params, batches, loss=loss, runtime=runtime, wd=wd, hvp=hvp)
    return op.trace(probes=probes, seed=seed)


COLUMNS = (
    "t",
    "loss",
    "top_eigenvalue",
    "eigenvalue_residual",  # ‖H v − λ v‖ of the returned vector: λ_max lies within it of some eigenvalue
    "eigenvalue_converged",
    "eigenvalue_products",
    "trace",
    "trace_stderr",  # Hutchinson's standard error (sample std of zᵀHz over √probes)
)


class Shard:
    """This process's part of every batch of ``batches``: the ``rank``-th of ``world`` near-equal slices of each
    (``tensor_split``; an empty slice is skipped). In a data-parallel run each rank passes its shard of the loss
    batches to :class:`HessianOperator`, which sums over the ranks: the products are those of the whole batches.
    Re-iterable as ``batches`` is."""

    def __init__(self, batches: Batches, rank: int, world: int):
        if not 0 <= rank < world:
            raise ConfigError(f"rank {rank} of {world} processes: a rank must be in 0 … {world - 1}")
        self.batches, self.rank, self.world = batches, rank, world
        self.train = getattr(batches, "train", False)  # what HessianOperator checks of a loader
        self.augment = getattr(batches, "augment", "none")
        self.n = getattr(batches, "n", None)

    def __iter__(self):
        for x, y in self.batches:
            x, y = x.tensor_split(self.world)[self.rank], y.tensor_split(self.world)[self.rank]
            if y.numel():
                yield x, y


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def curvature_along(
    template: nn.Module,
    points_at_t: Curve | Callable[[float], dict[str, torch.Tensor]],
    ts: Sequence[float],
    bn_batches: Batches,
    loss_batches: Batches,
    runtime: Runtime = CPU,
    *,
    loss: LossFn = cross_entropy,
    wd: float = 0.0,
    method: str = "lanczos",
    iters: int = 100,
    tol: float = 1e-3,
    probes: int = 100,
    seed: int = 0,
    hvp: str = "forward",
    progress: Callable[[str], None] | None = None,
    known: list[tuple[dict[str, torch.Tensor], dict]] | None = None,
) -> pd.DataFrame:
    """The curvature of the training loss along a path: one row per t of ``ts`` with :data:`COLUMNS`.

    At each t the point ``points_at_t(t)`` (parameters of ``template``; a :class:`Curve` gives
    ``curve.weights(t)``) has its BatchNorm statistics recalibrated on ``bn_batches``
    (:func:`modeconn.bn.recalibrate`, under the runtime's autocast, as before any measurement of a point), then
    the top eigenvalue and Hutchinson's trace of the Hessian of the loss over ``loss_batches`` are taken
    (:func:`hessian_eigenvalue`, :func:`hessian_trace`; ``loss`` is L(w) there, regulariser ½·wd·‖w‖²
    included). Every point uses the same ``seed``, so the same start vector and probes: the differences
    along t are the path's, not the draws'. ``progress(message)`` is called after each point.

    ``known``: (parameters, row) of the ends of paths measured before, extended with this path's (the ends only:
    one copy of the parameters each); a point whose parameters equal one of them exactly (the shared endpoints of
    a curve and its segment) takes its row without measuring.

    In a data-parallel run every process passes the same ``bn_batches`` (the statistics must be the same on every
    rank: gloo has no SyncBatchNorm) and its own shard of ``loss_batches`` (:class:`Shard`).
    """
    rows, known, last = [], [] if known is None else known, len(ts) - 1
    for i, (t, weights) in enumerate(parameters_along(template, points_at_t, ts)):
        row = next((dict(r) for w, r in known if _same(w, weights)), None)
        if row is None:
            at_point(template, weights, bn_batches, runtime)  # BN recalibrated at the point
            op = HessianOperator(template, weights, loss_batches, loss=loss, runtime=runtime, wd=wd, hvp=hvp)
            top = op.top_eigenvalue(method=method, iters=iters, tol=tol, seed=seed)
            trace = op.trace(probes=probes, seed=seed)
            row = {
                "loss": op.loss,
                "top_eigenvalue": top.value,
                "eigenvalue_residual": top.residual,
                "eigenvalue_converged": top.converged,
                "eigenvalue_products": top.products,
                "trace": trace.mean,
                "trace_stderr": trace.stderr,
            }
            if i in (0, last):
                known.append((weights, row))
        rows.append({"t": t, **row})
        if progress is not None:
            progress(
                f"t={t:.2f} λ_max {row['top_eigenvalue']:.4g} tr(H) {row['trace']:.4g} ± {row['trace_stderr']:.2g}"
            )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def curvature_paths(
    paths: Mapping[str, Curve],
    ts: Sequence[float],
    bn_batches: Batches,
    loss_batches: Batches,
    runtime: Runtime = CPU,
    *,
    progress: Callable[[str], None] | None = None,
    **options,
) -> dict[str, pd.DataFrame]:
    """:func:`curvature_along` of each of ``paths`` (name → a Curve, each on its ``template``) at ``ts``, a point
    at the ends of two paths measured once (the endpoints of a curve and of its segment); ``options`` are
    curvature_along's (``wd``, ``method``, ``iters``, ``tol``, ``probes``, ``seed``, ``hvp``, ``loss``).
    ``progress(message)`` after each point, led by the path's name."""
    known: list = []
    tables = {}
    for name, path in paths.items():
        report = None if progress is None else (lambda message, name=name: progress(f"{name} {message}"))
        tables[name] = curvature_along(
            path.template, path, ts, bn_batches, loss_batches, runtime, progress=report, known=known, **options
        )
    return tables


def curvature_summary(tables: Mapping[str, pd.DataFrame]) -> dict:
    """Per path, for the loss, λ_max and the trace: the values at the ends, the largest and the smallest along t and
    where, the mean
    over uniform t (trapezoidal rule); and ``endpoints``: the mean of λ_max and of the trace at the two ends of the
    first path (ŵ1 and ŵ2), and whether every eigenvalue met its tolerance."""
    out: dict = {}
    for name, rows in tables.items():
        t = rows["t"].tolist()
        out[name] = {}
        for measure in ("loss", "top_eigenvalue", "trace"):
            v = rows[measure].tolist()
            worst, least = max(range(len(v)), key=v.__getitem__), min(range(len(v)), key=v.__getitem__)
            mean_t = sum((t[i + 1] - t[i]) * (v[i] + v[i + 1]) / 2 for i in range(len(t) - 1)) / ((t[-1] - t[0]) or 1)
            out[name][measure] = {
                "start": v[0],
                "end": v[-1],
                "max": v[worst],
                "max_t": t[worst],
                "min": v[least],
                "min_t": t[least],
                "mean_t": mean_t if len(t) > 1 else v[0],
            }
    first = next(iter(tables.values()))
    ends = first.iloc[[0, -1]]
    out["endpoints"] = {
        "top_eigenvalue": float(ends["top_eigenvalue"].mean()),
        "trace": float(ends["trace"].mean()),
        "all_converged": bool(all(r["eigenvalue_converged"].all() for r in tables.values())),
    }
    return out
