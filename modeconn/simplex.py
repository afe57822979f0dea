"""Loss-surface simplexes and simplex ensembles (Benton, Maddox, Lotfi, Wilson, "Loss Surface Simplexes for
Mode Connecting Volumes and Fast Ensembling", ICML 2021).

A simplex of k vertices θ_0 … θ_{k−1} in weight space holds every point of barycentric weights α ∈ Δ^{k−1}
(α_i ≥ 0, Σ α_i = 1):

    φ(α) = Σ_i α_i θ_i

the flat-control-point machinery of :class:`modeconn.curves.Curve` with barycentric coefficients in place of
Bernstein or hat functions (DESIGN decision 1: :class:`~modeconn.curves.FlatPoints` is shared). A 1-simplex is
the segment, α = (1 − t, t). Fixed vertices are trained networks (buffers); free vertices are one trainable
tensor [m, P], trained (SPRO) by minimising

    ℓ(θ) = E_{α ~ Dirichlet(1)} [ L(φ(α)) + ½ · wd · ‖φ(α)‖² ] − λ · log V(θ_0, …, θ_{k−1})

with fresh α per minibatch (Dirichlet(1) is uniform on the simplex: i.i.d. Exp(1) draws, normalised) and the
simplex's volume V from the Cayley–Menger determinant of the squared distances d_ij = ‖θ_i − θ_j‖²:

    V² = (−1)^k / (2^{k−1} ((k−1)!)²) · det [[0, 1ᵀ], [1, D]]      (D = (d_ij), a (k+1) × (k+1) matrix)

The regulariser pushes the free vertices apart so that the low-loss region found has volume, not only a curve.
Its log is taken as ½ · log(V² + ε), smooth where the simplex is flat (a free vertex starts at the centroid of
the fixed ones, as in the reference code). The reference code's ``total_volume`` is V² (|det| over the norm),
so its −λ_B · log(V² + ε) is −2λ_B · log V: its λ_B is λ / 2 here.

A simplicial complex is several simplexes (faces, lists of vertex indices) sharing free vertices: e.g. one
simplex per trained mode, all of them sharing the same free vertices, joins the modes
(:func:`simplicial_complex`; the reference's ``complex_iterative``). Each step samples one face uniformly, then α
on it, and the regulariser sums the log volumes of the faces that hold a free vertex.

ESPRO: an ensemble of points sampled uniformly from one or several independently trained simplexes
(:func:`sample_points`, :func:`measure_samples`); its members' test probabilities combine as any other ensemble's
(:mod:`modeconn.ensemble`). :func:`measure_simplex` measures a simplex's vertices and sampled interior points
together (:class:`SimplexMeasure`: volume, vertices against interior, the sampled points' ensemble and stored
predictions); :func:`save_simplex` / :func:`load_simplex` keep one on disk.
A point is parameters only (DESIGN decision 11): :meth:`Simplex.weights` goes to
:func:`modeconn.points.measure` or :func:`modeconn.path.measure_path`, BatchNorm recalibrated there.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import ensemble, schedules
from .curves import FlatPoints, check_compatible
from .data import EvalBatches
from .errors import CheckpointError, ConfigError
from .io import atomic_torch_save, load_file
from .loop import History, Progress, Training, advancing, run_epochs
from .points import PointResult, measure
from .resume import ResumeState
from .runtime import CPU, Runtime
from .train import Batches, make_sgd

EPS = 1e-4  # ε of the log volume, on V² (the reference's 1e-4)


def dirichlet(k: int, generator: torch.Generator, n: int | None = None) -> torch.Tensor:
    """Barycentric weights uniform on the (k−1)-simplex, Dirichlet(1, …, 1): [k], or [n, k] with ``n``, float64.

    i.i.d. Exp(1) draws normalised by their sum, from ``generator``."""
    e = torch.empty((k,) if n is None else (n, k), dtype=torch.float64).exponential_(generator=generator)
    return e / e.sum(-1, keepdim=True)


def squared_distances(vertices: torch.Tensor) -> torch.Tensor:
    """d_ij = ‖θ_i − θ_j‖² of the rows of ``vertices`` [k, P]: [k, k], float64 (differences of float32
    weights are exact in float64), differentiable; one pass over P per pair."""
    v = vertices.double()
    k = v.shape[0]
    zero = v.new_zeros(())
    d = {(i, j): (v[i] - v[j]).pow(2).sum() for i in range(k) for j in range(i + 1, k)}
    return torch.stack([torch.stack([zero if i == j else d[min(i, j), max(i, j)] for j in range(k)]) for i in range(k)])


def cayley_menger(sq_dist: torch.Tensor) -> torch.Tensor:
    """The Cayley–Menger matrix [[0, 1ᵀ], [1, D]] [k + 1, k + 1] of squared distances ``sq_dist`` [k, k]."""
    k = sq_dist.shape[0]
    ones = sq_dist.new_ones(k, 1)
    top = torch.cat([sq_dist.new_zeros(1, 1), ones.T], dim=1)  # (1, k+1)
    return torch.cat([top, torch.cat([ones, sq_dist], dim=1)], dim=0)


def squared_volume(vertices: torch.Tensor) -> torch.Tensor:
    """V² of the simplex whose vertices are the rows of ``vertices`` [k, P] (k − 1 dimensional volume; 1 for a
    single vertex), float64, from the Cayley–Menger determinant; never below 0 (rounding of a flat simplex)."""
    k = vertices.shape[0]
    with torch.autocast(vertices.device.type, enabled=False):
        det = torch.linalg.det(cayley_menger(squared_distances(vertices)))
        norm = 2.0 ** (k - 1) * math.factorial(k - 1) ** 2
        return ((-1) ** k * det / norm).clamp(min=0)


def volume(vertices: torch.Tensor) -> torch.Tensor:
    """V of the simplex whose vertices are the rows of ``vertices`` [k, P]: a 0-d float64 tensor."""
    return squared_volume(vertices).sqrt()


def log_volume(vertices: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """½ · log(V² + ε) ≈ log V, smooth (finite gradient) where the simplex is flat: the regulariser's term."""
    return 0.5 * torch.log(squared_volume(vertices) + eps)


class Simplex(FlatPoints):
    """A simplex (or simplicial complex) in the weight space of ``template``.

    ``fixed`` are the trained networks' parameter dicts (vertices 0 … f − 1, kept as a buffer ``fixed`` [f, P]);
    ``free`` is the number of free vertices, all started at the centroid of the fixed ones, or their starting
    parameter dicts (vertices f … f + m − 1, one trainable tensor ``free`` [m, P]). ``simplexes`` lists the faces
    as vertex indices (default: one simplex of all vertices); every free vertex must be in one. The template's
    buffers (BatchNorm statistics) are shared by all points and recalibrated per point when measured.
    """

    def __init__(
        self,
        template: nn.Module,
        fixed: Sequence[dict[str, torch.Tensor]],
        free: int | Sequence[dict[str, torch.Tensor]] = 1,
        simplexes: Sequence[Sequence[int]] | None = None,
    ):
        super().__init__()
        if len(fixed) == 0:
            raise ConfigError("a simplex needs at least one fixed vertex (a trained network)")
        starts = None if isinstance(free, int) else list(free)
        num_free = free if starts is None else len(starts)
        if num_free < 0:
            raise ConfigError(f"a simplex's number of free vertices must be 0 or more, got {num_free}")
        for i, state in enumerate([*fixed, *(starts or [])]):
            check_compatible(template, state, f"vertex {i}")
        self._adopt(template)
        flat = lambda state: torch.cat([state[n].detach().float().reshape(-1) for n in self.names])  # noqa: E731
        a = torch.stack([flat(state) for state in fixed])  # (f, P)
        b = torch.stack([flat(state) for state in starts]) if starts else a.mean(0, keepdim=True).repeat(num_free, 1)
        self.register_buffer("fixed", a)
        self.free = nn.Parameter(b.clone())
        k = len(fixed) + num_free
        self.simplexes = [list(range(k))] if simplexes is None else [list(map(int, s)) for s in simplexes]
        for s in self.simplexes:
            if not s or len(set(s)) != len(s) or not all(0 <= i < k for i in s):
                raise ConfigError(f"a simplex's vertices {s} must be distinct indices among the {k} vertices")
        lonely = sorted(set(range(len(fixed), k)) - {i for s in self.simplexes for i in s})
        if lonely:
            raise ConfigError(f"free vertices {lonely} are in no simplex: nothing would train them")

    @property
    def num_fixed(self) -> int:
        return self.fixed.shape[0]

    @property
    def num_free(self) -> int:
        return self.free.shape[0]

    @property
    def num_vertices(self) -> int:
        return self.num_fixed + self.num_free

    def rows(self) -> list[torch.Tensor]:
        """The fixed vertices, then the free ones (detached): the order of the coefficients."""
        return [*self.fixed, *self.free.detach()]

    def trainable(self) -> nn.Parameter:
        return self.free

    def trainable_coefficients(self, c: list[float]) -> list[float]:
        """The coefficients of the free vertices."""
        return c[self.num_fixed :]

    def _differentiable(self) -> bool:
        return torch.is_grad_enabled() and self.free.requires_grad and self.num_free > 0

    def coefficient_list(self, alpha: Sequence[float] | torch.Tensor, simplex: int = 0) -> list[float]:
        """Barycentric weights ``alpha`` on face ``simplex`` as coefficients of all vertices (0 off the face)."""
        face = self.simplexes[simplex]
        alpha = [float(a) for a in alpha]
        if len(alpha) != len(face):
            raise ConfigError(f"simplex {simplex} has {len(face)} vertices; got {len(alpha)} barycentric weights")
        c = [0.0] * self.num_vertices
        for i, a in zip(face, alpha):
            c[i] = a
        return c

    def sample(self, generator: torch.Generator) -> list[float]:
        """A point uniform on a face (a face drawn uniformly where there are several, then α ~ Dirichlet(1)) as
        coefficients of all vertices."""
        s = int(torch.randint(len(self.simplexes), (), generator=generator)) if len(self.simplexes) > 1 else 0
        return self.coefficient_list(dirichlet(len(self.simplexes[s]), generator).tolist(), s)

    def point(self, alpha: Sequence[float] | torch.Tensor, simplex: int = 0) -> torch.Tensor:
        """φ(α) = Σ_i α_i θ_i on face ``simplex`` as one flat float32 vector [P] (no autograd: a training step
        goes through :meth:`forward`)."""
        return self.combine(self.coefficient_list(alpha, simplex))

    def weights(self, alpha: Sequence[float] | torch.Tensor, simplex: int = 0) -> dict[str, torch.Tensor]:
        """φ(α) as the template's parameter dict (parameters only, float32): what :mod:`modeconn.points` measures."""
        return self.unflat(self.point(alpha, simplex))

    def vertex(self, i: int) -> dict[str, torch.Tensor]:
        """Vertex ``i`` (fixed ones first) as a parameter dict."""
        return self.unflat(self.rows()[i])

    def vertices(self, simplex: int | None = None) -> torch.Tensor:
        """The vertices [k, P] (of face ``simplex``, or all), differentiable w.r.t. the free ones."""
        v = torch.cat([self.fixed, self.free])
        return v if simplex is None else v[self.simplexes[simplex]]

    def volume(self, simplex: int = 0) -> float:
        """V of face ``simplex`` (Cayley–Menger)."""
        with torch.no_grad():
            return float(volume(self.vertices(simplex)))

    def log_volume(self, eps: float = EPS) -> torch.Tensor:
        """Σ over the faces that hold a free vertex of ½ · log(V² + ε): the regulariser, differentiable."""
        terms = [
            log_volume(self.vertices(s), eps)
            for s, face in enumerate(self.simplexes)
            if any(i >= self.num_fixed for i in face)
        ]
        return torch.stack(terms).sum() if terms else self.fixed.new_zeros((), dtype=torch.float64)

    def forward(self, x: torch.Tensor, c: list[float], l2: bool = False):
        """The template's output at Σ_i c_i θ_i (``c``: coefficients of all vertices, e.g. :meth:`sample`); with
        ``l2`` also ‖φ‖². The step goes through here, so that DistributedDataParallel can wrap a simplex."""
        return self.run_at(x, c, l2)

    @torch.no_grad()
    def use_channels_last(self) -> None:
        """Store every 4-D (conv) weight in (O, H, W, I) order (as :meth:`Curve.use_channels_last`)."""
        if all(nhwc or len(shape) != 4 for nhwc, shape in zip(self.nhwc, self.shapes)):
            return
        plain = self._relayout(torch.cat([self.fixed, self.free]), to_nhwc=False)  # (k, P)
        self.nhwc = [len(shape) == 4 for shape in self.shapes]
        stack = self._relayout(plain, to_nhwc=True)
        self.fixed.copy_(stack[: self.num_fixed])
        self.free.copy_(stack[self.num_fixed :])


def simplicial_complex(template: nn.Module, modes: Sequence[dict[str, torch.Tensor]], free: int = 1) -> Simplex:
    """Modes joined through ``free`` shared free vertices: one simplex per mode, (mode_i, free_1 … free_m)."""
    f = len(modes)
    return Simplex(template, modes, free, [[i, *range(f, f + free)] for i in range(f)])


def simplex_loss(
    simplex: Simplex,
    wd: float,
    volume_weight: float,
    generator: torch.Generator,
    module: nn.Module | None = None,
    samples: int = 1,
    eps: float = EPS,
):
    """The SPRO objective as a ``loss_fn(x, y)`` for :func:`modeconn.train.train_epoch`.

    Each call draws ``samples`` points uniformly (:meth:`Simplex.sample`, from ``generator``) and returns the mean
    over them of ``CE(f(x; φ(α)), y) + ½ · wd · ‖φ(α)‖²``, minus ``volume_weight · Σ ½ log(V² + ε)`` over the
    faces with a free vertex, and the last point's logits. The optimiser's own weight decay must be 0.
    ``module`` is what runs the simplex (e.g. wrapped in DistributedDataParallel; default ``simplex``).
    """
    run = module if module is not None else simplex

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = 0.0
        for _ in range(samples):
            c = simplex.sample(generator)
            if wd > 0:
                logits, sq_norm = run(x, c, l2=True)
                total = total + F.cross_entropy(logits.float(), y) + 0.5 * wd * sq_norm
            else:
                logits = run(x, c)
                total = total + F.cross_entropy(logits.float(), y)
        loss = total / samples
        if volume_weight:
            loss = loss - volume_weight * simplex.log_volume(eps).float()
        return loss, logits

    return loss_fn


def fit_simplex(
    simplex: Simplex,
    batches: Batches,
    *,
    epochs: int,
    lr: float,
    momentum: float,
    wd: float,
    volume_weight: float,
    seed: int,
    samples: int = 1,
    eps: float = EPS,
    runtime: Runtime = CPU,
    resume: ResumeState | None = None,
    progress: Progress | None = None,
) -> History:
    """Train the free vertices of ``simplex`` (placed by ``runtime.prepare``) for ``epochs`` on ``batches``, as
    :func:`modeconn.curve_fit.fit_curve` trains a curve's bends: SGD (its weight decay 0: ``wd`` acts on φ(α)),
    the standard schedule, the α of each minibatch from a generator seeded with ``seed``, through the one
    resumable loop (:func:`modeconn.loop.run_epochs`). Returns the per-epoch rows (loss, volume term included,
    and accuracy at random points) and the training time.
    """
    if simplex.num_free == 0:
        raise ConfigError("the simplex has no free vertex: nothing to train")
    if samples < 1 or (samples > 1 and runtime.world_size > 1):
        raise ConfigError(f"samples = {samples}: one or more per step, and one in a data-parallel run")
    optimizer = make_sgd([simplex.free], lr, momentum, 0.0)
    total = epochs * len(batches)
    lr_at = lambda i: schedules.standard_lr((i - 1) / total, lr)  # noqa: E731
    generator = torch.Generator().manual_seed(seed)  # the points of each minibatch
    step = simplex_loss(simplex, wd, volume_weight, generator, runtime.wrap(simplex), samples, eps)
    training = Training(simplex, optimizer, batches, step, lr_at, (generator,), what="simplex training")
    saved = resume.load() if resume is not None else None

    def report(row: dict) -> None:
        advance(f"loss at random points {row['train_loss']:.3f} acc {row['train_accuracy']:.3f}")

    done = int(saved["epoch"]) if saved is not None else 0
    with advancing(progress, epochs - done) as advance:
        return run_epochs(training, epochs, runtime=runtime, resume=resume, saved=saved, report=report)


def sample_points(simplex: Simplex, n: int, generator: torch.Generator) -> list[dict[str, torch.Tensor]]:
    """``n`` points drawn uniformly from the simplex (or complex), as parameter dicts: ESPRO's members."""
    return [simplex.unflat(simplex.combine(simplex.sample(generator))) for _ in range(n)]


def measure_samples(
    simplexes: Simplex | Sequence[Simplex],
    n: int,
    generator: torch.Generator,
    batches: EvalBatches,
    runtime: Runtime = CPU,
) -> list[PointResult]:
    """``n`` points sampled uniformly from each simplex, each measured (BN recalibrated at the point): the
    interior's loss and error, and, through their ``test_logprobs``, ESPRO's ensemble of them all."""
    simplexes = [simplexes] if isinstance(simplexes, Simplex) else list(simplexes)
    return [measure(s.template, w, batches, runtime) for s in simplexes for w in sample_points(s, n, generator)]


@dataclass
class SimplexMeasure:
    """A simplex measured (:func:`measure_simplex`): its faces' volumes, each vertex, and ``n`` points sampled
    uniformly from it (their coefficients over all vertices, and each point's predictions)."""

    volumes: list[float]  # V of each face
    vertices: list[PointResult]  # fixed vertices first
    coefficients: list[list[float]]  # (n, k): each sampled point's barycentric weights over all vertices
    samples: list[PointResult]

    @staticmethod
    def row(r: PointResult, wd: float) -> dict[str, float]:
        """The paper's measures at one point (:meth:`PointResult.row`) and, with a validation split, its val
        NLL and error."""
        out = r.row(wd)
        if r.val_logprobs is not None and r.val_labels is not None:
            out.update(
                val_nll=ensemble.nll(r.val_logprobs, r.val_labels),
                val_error=ensemble.error(r.val_logprobs, r.val_labels),
            )
        return out

    def rows(self, wd: float) -> list[dict]:
        """One row per measured point: the vertices (``point`` vertex_<i>), then the samples (sample_<j>, with
        their barycentric weights alpha_<i>)."""
        k = len(self.vertices)
        out = [
            {"point": f"vertex_{i}", **{f"alpha_{j}": float(i == j) for j in range(k)}, **self.row(r, wd)}
            for i, r in enumerate(self.vertices)
        ]
        out += [
            {"point": f"sample_{n}", **{f"alpha_{j}": a for j, a in enumerate(c)}, **self.row(r, wd)}
            for n, (c, r) in enumerate(zip(self.coefficients, self.samples))
        ]
        return out

    def summary(self, wd: float, method: str = "probs") -> dict:
        """The volume (of face 0; ``volumes``: every face of a complex), each vertex's measures and their mean,
        the interior's (the sampled points') mean, std, min and max of each measure, and the ensemble of the
        sampled points (ESPRO over this simplex: its test, and val, error and NLL, members combined by
        ``method``)."""
        vertices = [self.row(r, wd) for r in self.vertices]
        samples = [self.row(r, wd) for r in self.samples]

        def stats(values: list[float]) -> dict[str, float]:
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            return {"mean": statistics.fmean(values), "std": sd, "min": min(values), "max": max(values)}

        out: dict = {"volume": self.volumes[0], "samples": len(samples)}
        if len(self.volumes) > 1:  # a simplicial complex: every face's
            out["volumes"] = list(self.volumes)
        out["vertices"] = {f"vertex_{i}": r for i, r in enumerate(vertices)}
        out["vertex_mean"] = {key: statistics.fmean(r[key] for r in vertices) for key in vertices[0]}
        if samples:
            out["interior"] = {key: stats([r[key] for r in samples]) for key in samples[0]}
            test = ensemble.combine([r.test_logprobs for r in self.samples], method)
            labels = self.samples[0].test_labels
            ens = {"test_nll": ensemble.nll(test, labels), "test_error": ensemble.error(test, labels)}
            if all(r.val_logprobs is not None for r in self.samples):
                val, val_labels = (
                    ensemble.combine([r.val_logprobs for r in self.samples], method),
                    self.samples[0].val_labels,
                )
                ens.update(val_nll=ensemble.nll(val, val_labels), val_error=ensemble.error(val, val_labels))
            out["interior_ensemble"] = ens
        return out

    def predictions(self) -> dict:
        """The sampled points' stored predictions (ESPRO's members, DESIGN decision 3): ``logprobs`` [n, N, K] and
        ``labels`` [N] on test, ``val_logprobs`` [n, N_val, K] and ``val_labels`` where there is a validation
        split, and the points' ``coefficients`` [n, k]."""
        out = {
            "logprobs": torch.stack([r.test_logprobs for r in self.samples]),
            "labels": self.samples[0].test_labels,
            "coefficients": torch.tensor(self.coefficients, dtype=torch.float64),
        }
        if all(r.val_logprobs is not None for r in self.samples):
            out.update(
                val_logprobs=torch.stack([r.val_logprobs for r in self.samples]), val_labels=self.samples[0].val_labels
            )
        return out


def measure_simplex(
    simplex: Simplex,
    n: int,
    generator: torch.Generator,
    batches: EvalBatches,
    runtime: Runtime = CPU,
    progress: Callable[[str], None] | None = None,
) -> SimplexMeasure:
    """Each vertex and ``n`` points drawn uniformly from ``simplex`` (:meth:`Simplex.sample`, from ``generator``:
    the points :func:`measure_samples` measures), each measured with BatchNorm recalibrated at the point
    (:func:`modeconn.points.measure`); ``progress(message)`` after each point."""
    if n < 1:
        raise ConfigError(f"measure_simplex: n = {n}; sample at least one interior point")
    advance = progress or (lambda message="": None)
    vertices = []
    for i in range(simplex.num_vertices):
        vertices.append(measure(simplex.template, simplex.vertex(i), batches, runtime))
        advance(f"vertex {i}: test error {vertices[-1].test_error:.4f}")
    coefficients, samples = [], []
    for j in range(n):
        coefficients.append(simplex.sample(generator))
        samples.append(measure(simplex.template, simplex.unflat(simplex.combine(coefficients[-1])), batches, runtime))
        advance(f"sample {j}: test error {samples[-1].test_error:.4f}")
    volumes = [simplex.volume(s) for s in range(len(simplex.simplexes))]
    return SimplexMeasure(volumes, vertices, coefficients, samples)


def save_simplex(path: Path | str, simplex: Simplex, spec: dict, **extra) -> None:
    """Write a simplex atomically: the model spec, every vertex as a parameter dict (fixed ones first, in the
    standard layout whatever the simplex's memory layout), the number of fixed ones and the faces."""
    vertices = [
        {k: v.detach().contiguous().cpu() for k, v in simplex.vertex(i).items()} for i in range(simplex.num_vertices)
    ]
    blob = {"format": "modeconn.simplex/1", "spec": spec, "vertices": vertices, "num_fixed": simplex.num_fixed}
    atomic_torch_save({**blob, "simplexes": simplex.simplexes, **extra}, path)


def load_simplex(
    path: Path | str,
    build_template: Callable[[dict], nn.Module],
    hint: str = "Fit it again and save it with save_simplex.",
) -> tuple[Simplex, dict]:
    """Read a simplex written by :func:`save_simplex`; ``build_template(spec)`` makes the network. ``hint`` ends
    the error message of a missing or corrupt file."""
    blob = load_file(path, "simplex file", hint)
    if not isinstance(blob, dict) or blob.get("format") != "modeconn.simplex/1":
        raise CheckpointError(f"{path} is not a modeconn simplex file. {hint}")
    f, vertices = blob["num_fixed"], blob["vertices"]
    return Simplex(build_template(blob["spec"]), vertices[:f], vertices[f:], blob["simplexes"]), blob
