"""Curvature (modeconn.curvature): the top Hessian eigenvalue and Hutchinson's trace against exact Hessians.

References, none of them the code under test (and, at the end, Shard and curvature_paths' sharing of points):

- ``torch.autograd.functional.hessian`` of the loss as a function of the flattened parameters (float64) on a
  small MLP, and on a convolutional network with BatchNorm at a point of a segment, its BN recalibrated by
  ``torch.optim.swa_utils.update_bn`` on a plain copy;
- PyHessian's method for the products (Yao et al. 2020: ``torch.autograd.grad`` of the loss with
  ``create_graph=True``, then the gradient of ⟨g, v⟩, network in eval mode, averaged over the batches weighted
  by their sizes), written here, on a convolutional network with BatchNorm; the library takes its products
  with ``torch.func`` (``jvp`` or ``vjp`` of ``grad``) instead;
- closed forms: a symmetric matrix of known spectrum, and a diagonal one, whose Hutchinson estimate is exact.
"""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.optim.swa_utils import update_bn

from modeconn.bn import recalibrate
from modeconn.curvature import (
    COLUMNS,
    HessianOperator,
    Shard,
    curvature_along,
    curvature_paths,
    hessian_eigenvalue,
    hessian_trace,
    hutchinson_trace,
    top_eigenvalue,
)
from modeconn.curves import Curve
from modeconn.errors import ConfigError, ModeconnError
from modeconn.runtime import CPU, Runtime


def flat_hessian(model: nn.Module, params: dict, x: torch.Tensor, y: torch.Tensor, wd: float = 0.0):
    """The exact Hessian [P, P] of mean cross-entropy over (x, y) (+ ½·wd·‖w‖²) with respect to the flattened
    parameters, by torch.autograd.functional.hessian, model in eval mode."""
    names = list(params)
    shapes, sizes = [params[n].shape for n in names], [params[n].numel() for n in names]
    model.eval()

    def loss(w):
        p = {n: part.reshape(shape) for n, part, shape in zip(names, w.split(sizes), shapes)}
        return F.cross_entropy(functional_call(model, p, (x,)), y) + 0.5 * wd * (w**2).sum()

    w = torch.cat([params[n].detach().reshape(-1) for n in names])
    return torch.autograd.functional.hessian(loss, w)


def mlp_problem():
    """A 5-8-3 tanh MLP in float64 and two batches of unequal size (7 and 5): the loss is the mean over all
    12 samples only if the batches are weighted by their sizes. Its Hessian's spectrum (seed 2) has
    λ_2/λ_1 ≈ 0.57, so power iteration converges in a few dozen products."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(12, 5, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 3, (12,), generator=g)
    return model, [(x[:7], y[:7]), (x[7:], y[7:])], x, y


def conv_bn(seed: int = 0, dtype=torch.float32) -> nn.Module:
    """A small convolutional network with BatchNorm (194 parameters)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, stride=2),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).to(dtype)


def image_batches(dtype=torch.float32, sizes=(6, 4), seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(n, 2, 8, 8, generator=g).to(dtype) + 0.5, torch.randint(0, 3, (n,), generator=g)) for n in sizes
    ]


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def pyhessian_hvp(model: nn.Module, batches, v: list[torch.Tensor]) -> list[torch.Tensor]:
    """Hv the way PyHessian takes it: per batch, g = ∇ℓ_b with create_graph=True, then ∇⟨g, v⟩; weighted by
    the batch sizes and divided by their total; network in eval mode."""
    model.eval()
    params = list(model.parameters())
    total, n = [torch.zeros_like(p) for p in params], 0
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        g = torch.autograd.grad(loss, params, create_graph=True)
        hv = torch.autograd.grad(g, params, grad_outputs=v)
        total = [t + h * y.shape[0] for t, h in zip(total, hv)]
        n += y.shape[0]
    return [t / n for t in total]


def pyhessian_matrix(model: nn.Module, batches) -> torch.Tensor:
    """The Hessian [P, P] from PyHessian-style products with every unit vector, symmetrised."""
    params = list(model.parameters())
    sizes = [p.numel() for p in params]
    size = sum(sizes)
    columns = []
    for i in range(size):
        e = torch.zeros(size, dtype=params[0].dtype)
        e[i] = 1
        hv = pyhessian_hvp(model, batches, [part.reshape(p.shape) for part, p in zip(e.split(sizes), params)])
        columns.append(torch.cat([h.reshape(-1) for h in hv]))
    h = torch.stack(columns, dim=1)
    return (h + h.T) / 2


def test_eigenvalue_and_trace_equal_the_exact_hessian_of_a_small_mlp():
    """λ_max by power iteration and by Lanczos, both Hessian-vector product modes, and the trace, against
    torch.autograd.functional.hessian of the loss over both batches plus ½·wd·‖w‖², to 1e-4 relative. The
    trace three ways: unit probes √P·e_i (whose Σ z zᵀ/P = I) give it exactly; 100 seeded Rademacher probes
    land within 3 standard errors; and their standard error is the closed form √(2·Σ_{i≠j} H_ij² / m) to 20%
    (a wrong variance, or probes that are not ±1, would miss it)."""
    model, batches, x, y = mlp_problem()
    params, wd = params_of(model), 1e-2
    h = flat_hessian(model, params, x, y, wd=wd)
    spectrum = torch.linalg.eigvalsh(h)
    exact_top, exact_trace = spectrum[-1].item(), h.trace().item()
    assert spectrum[0].item() < 0 < exact_top  # a Hessian with negative curvature too: no accidental PSD case
    for method in ("power", "lanczos"):
        for hvp in ("forward", "reverse"):
            top = hessian_eigenvalue(model, params, batches, wd=wd, method=method, hvp=hvp, iters=200, tol=1e-5)
            assert top.converged, (method, hvp, top)
            assert top.value == pytest.approx(exact_top, rel=1e-4), (method, hvp)
            residual = (h @ top.vector - exact_top * top.vector).norm().item()
            assert residual < 1e-3 * exact_top, f"{method}/{hvp}: not the top eigenvector (residual {residual})"
    size = h.shape[0]
    unit = hessian_trace(model, params, batches, wd=wd, probes=math.sqrt(size) * torch.eye(size, dtype=h.dtype))
    assert unit.mean == pytest.approx(exact_trace, rel=1e-6) and unit.probes == size
    estimate = hessian_trace(model, params, batches, wd=wd, probes=100, seed=0)
    assert abs(estimate.mean - exact_trace) <= 3 * estimate.stderr, (estimate.mean, estimate.stderr, exact_trace)
    off_diagonal = h - torch.diag(h.diagonal())
    expected_stderr = math.sqrt(2 * off_diagonal.square().sum().item() / 100)
    assert estimate.stderr == pytest.approx(expected_stderr, rel=0.2)
    first = hessian_trace(model, params, batches, wd=wd, probes=5, seed=0)
    assert torch.equal(first.samples, estimate.samples[:5]), "the same seed draws the same probes, in order"
    as_function = lambda p, inputs: functional_call(model, p, (inputs,))  # any fn(params, x) -> logits
    top = hessian_eigenvalue(as_function, params, batches, wd=wd, method="lanczos", tol=1e-8)
    assert top.value == pytest.approx(exact_top, rel=1e-6)
    # The operator's loss is the loss the Hessian is of: the mean over all 12 samples, regulariser included.
    op = HessianOperator(model, params, batches, wd=wd)
    op(torch.ones(op.size, dtype=torch.float64))
    l2 = sum((p**2).sum() for p in params.values()).item()
    assert op.loss == pytest.approx(F.cross_entropy(model(x), y).item() + 0.5 * wd * l2, rel=1e-12)


def test_the_largest_eigenvalue_is_found_where_a_negative_one_dominates():
    """Power iteration alone converges to the eigenvalue of largest magnitude, here −5; the shifted second
    iteration, and Lanczos, return the largest, 3. A diagonal operator's Hutchinson estimate is exact
    (zᵀ D z = Σ d_i for every ±1 vector z): mean = trace, standard error 0."""
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    spectrum = torch.tensor([-5.0, 3.0, 1.0, 0.5, -0.2, 0.0], dtype=torch.float64)
    a = q @ torch.diag(spectrum) @ q.T
    for method in ("power", "lanczos"):
        top = top_eigenvalue(lambda v: a @ v, 6, method=method, iters=500, tol=1e-10, dtype=torch.float64)
        assert top.converged and top.value == pytest.approx(3.0, rel=1e-9), (method, top)
        assert (a @ top.vector - 3.0 * top.vector).norm().item() < 1e-6
    positive = q @ torch.diag(spectrum.abs()) @ q.T
    top = top_eigenvalue(lambda v: positive @ v, 6, iters=500, tol=1e-10, dtype=torch.float64)
    assert top.value == pytest.approx(5.0, rel=1e-9)
    d = torch.arange(1.0, 7.0, dtype=torch.float64)
    trace = hutchinson_trace(lambda v: d * v, 6, probes=5, dtype=torch.float64)
    assert trace.mean == pytest.approx(21.0, rel=1e-12) and trace.stderr == 0.0
    assert math.isnan(hutchinson_trace(lambda v: a @ v, 6, probes=1, dtype=torch.float64).stderr)  # one probe


def test_conv_bn_products_match_pyhessians_double_backward():
    """On a convolutional network with BatchNorm (statistics recalibrated, network left in train mode by the
    caller): the library's products (torch.func, both modes) equal PyHessian-style products (autograd.grad
    with create_graph=True, then grad of ⟨g, v⟩, eval mode), and λ_max and the trace equal those of the Hessian
    built from PyHessian-style products with every unit vector, to 1e-4 relative. The module's mode and its
    running statistics are as they were."""
    model = conv_bn()
    batches = image_batches()
    recalibrate(model, batches)
    model.train()
    params = params_of(model)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    g = torch.Generator().manual_seed(5)
    v = torch.randn(sum(p.numel() for p in params.values()), generator=g)
    v_list = [part.reshape(p.shape) for part, p in zip(v.split([p.numel() for p in params.values()]), params.values())]
    reference = torch.cat([h.reshape(-1) for h in pyhessian_hvp(model, batches, v_list)])
    model.train()
    for hvp in ("forward", "reverse"):
        product = HessianOperator(model, params, batches, hvp=hvp)(v)
        assert torch.allclose(product, reference, rtol=1e-4, atol=1e-6 * reference.abs().max().item()), hvp
        assert model.training, "the caller's train mode is restored after the products"
    h = pyhessian_matrix(model, batches)
    model.train()
    spectrum = torch.linalg.eigvalsh(h.double())
    top = hessian_eigenvalue(model, params, batches, method="lanczos", iters=100, tol=1e-6)
    assert top.converged and top.value == pytest.approx(spectrum[-1].item(), rel=1e-4)
    power = hessian_eigenvalue(model, params, batches, method="power", iters=300, tol=1e-4)
    assert power.value == pytest.approx(spectrum[-1].item(), rel=1e-4), power
    size = h.shape[0]
    trace = hessian_trace(model, params, batches, probes=math.sqrt(size) * torch.eye(size))
    assert trace.mean == pytest.approx(h.trace().item(), rel=1e-4)
    assert model.training
    for name, value in model.named_buffers():
        assert torch.equal(value, buffers[name]), f"{name} changed by the products"


def test_curvature_along_a_segment_recalibrates_bn_at_each_point():
    """Along the segment between two conv-BN networks: at each t the row's λ_max, trace and loss are those of
    a plain copy holding the point, its BN recalibrated by torch.optim.swa_utils.update_bn, Hessian by
    torch.autograd.functional.hessian (float64): λ_max to 1e-4 relative, the trace within 3 standard errors.
    Without recalibration (the template's statistics from t = 0 at t = 0.5) λ_max would differ."""
    a, b = conv_bn(0, torch.float64), conv_bn(1, torch.float64)
    wa, wb = params_of(a), params_of(b)
    bn_batches = image_batches(torch.float64, sizes=(8, 8), seed=4)
    loss_batches = image_batches(torch.float64)
    x, y = torch.cat([xb for xb, _ in loss_batches]), torch.cat([yb for _, yb in loss_batches])
    template = conv_bn(2, torch.float64)
    ts = [0.0, 0.5]
    rows = curvature_along(
        template,
        lambda t: {k: (1 - t) * wa[k] + t * wb[k] for k in wa},
        ts,
        bn_batches,
        loss_batches,
        method="lanczos",
        tol=1e-8,
        probes=100,
    )
    assert list(rows.columns) == list(COLUMNS) and rows["t"].tolist() == ts
    for t, row in zip(ts, rows.itertuples()):
        plain = copy.deepcopy(a)
        with torch.no_grad():
            for name, p in plain.named_parameters():
                p.copy_((1 - t) * wa[name] + t * wb[name])
        update_bn(bn_batches, plain)
        h = flat_hessian(plain, params_of(plain), x, y)
        assert row.eigenvalue_converged
        assert row.top_eigenvalue == pytest.approx(torch.linalg.eigvalsh(h)[-1].item(), rel=1e-4), t
        assert abs(row.trace - h.trace().item()) <= 3 * row.trace_stderr, (t, row.trace, h.trace().item())
        assert row.loss == pytest.approx(F.cross_entropy(plain(x), y).item(), rel=1e-10)
    stale = copy.deepcopy(a)
    update_bn(bn_batches, stale)  # the statistics of t = 0, at the point of t = 0.5
    with torch.no_grad():
        for name, p in stale.named_parameters():
            p.copy_(0.5 * wa[name] + 0.5 * wb[name])
    h_stale = flat_hessian(stale, params_of(stale), x, y)
    assert torch.linalg.eigvalsh(h_stale)[-1].item() != pytest.approx(rows["top_eigenvalue"][1], rel=1e-3)


def test_a_state_dict_an_iterator_or_a_training_loader_is_refused(tiny_data, loader_of):
    """Measuring calls take parameters, never a state dict with buffers (BN statistics are recalibrated at the
    point, not passed in); the batches are read once per product, so an iterator would run dry and a training
    loader would give other batches (another loss) at every pass. An evaluation Loader is what to pass."""
    model = conv_bn()
    batches = image_batches()
    net = nn.Sequential(nn.Flatten(), nn.Linear(144, 3))
    with pytest.raises(ModeconnError, match="training loader"):
        hessian_trace(net, params_of(net), loader_of(tiny_data.train, tiny_data.info, train=True), probes=1)
    evaluation = loader_of(tiny_data.train, tiny_data.info, batch_size=40)  # 96 images: 40, 40, 16
    x = torch.cat([xb for xb, _ in evaluation])
    as_list = [(x, torch.cat([yb for _, yb in evaluation]))]
    assert hessian_trace(net, params_of(net), evaluation, probes=3).mean == pytest.approx(
        hessian_trace(net, params_of(net), as_list, probes=3).mean, rel=1e-5
    )
    state = model.state_dict()
    for call in (hessian_eigenvalue, hessian_trace):
        with pytest.raises(ModeconnError, match="buffers"):
            call(model, state, batches)
    with pytest.raises(ModeconnError, match="buffers"):
        curvature_along(model, lambda t: state, [0.0], batches, batches)
    with pytest.raises(ModeconnError, match="iterator"):
        hessian_eigenvalue(model, params_of(model), iter(batches))
    with pytest.raises(ConfigError, match="lanczos"):
        hessian_eigenvalue(model, params_of(model), batches, method="arnoldi")
    with pytest.raises(ConfigError, match="reverse"):
        hessian_trace(model, params_of(model), batches, hvp="backward")


def test_products_stay_float32_under_a_bf16_runtime():
    """The GPU's precision forced on the CPU: with a bf16-autocast Runtime, and inside an enclosing bf16
    autocast, λ_max and the trace are those of float32, exactly (the products run with autocast off). The
    check is not vacuous: the same network's forward under the runtime's autocast gives another loss. With
    channels_last too, the same numbers to rounding (other kernels)."""
    model = conv_bn()
    batches = image_batches()
    recalibrate(model, batches)
    params = params_of(model)
    bf16 = Runtime(precision="bf16")
    x, y = batches[0]
    with bf16.autocast():
        logits = model.eval()(x)
    assert logits.dtype == torch.bfloat16
    assert F.cross_entropy(logits.float(), y).item() != F.cross_entropy(model(x), y).item()
    kw = dict(iters=20, tol=0.0)  # a fixed number of products: the same arithmetic, to the bit
    fp32 = hessian_eigenvalue(model, params, batches, runtime=CPU, **kw)
    fp32_trace = hessian_trace(model, params, batches, runtime=CPU, probes=4)
    assert hessian_eigenvalue(model, params, batches, runtime=bf16, **kw).value == fp32.value
    assert hessian_trace(model, params, batches, runtime=bf16, probes=4).mean == fp32_trace.mean
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert hessian_eigenvalue(model, params, batches, runtime=bf16, **kw).value == fp32.value
    gpu_like = Runtime(precision="bf16", channels_last=True)
    assert hessian_eigenvalue(model, params, batches, runtime=gpu_like, **kw).value == pytest.approx(
        fp32.value, rel=1e-5
    )


def _rank(rank: int, store: str, out: str) -> None:
    """One of two gloo processes: its shard of the batches, the products summed over both."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        runtime = Runtime(world_size=2, rank=rank)
        model, batches, _, _ = mlp_problem()
        shard = batches[rank::2]  # rank 0 the batch of 7, rank 1 the batch of 5
        params = params_of(model)
        top = hessian_eigenvalue(model, params, shard, runtime=runtime, method="lanczos", tol=1e-8)
        trace = hessian_trace(model, params, shard, runtime=runtime, probes=10)
        torch.save({"top": top.value, "trace": trace.mean}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_processes_each_with_a_shard_give_the_curvature_of_one(tmp_path):
    """Data-parallel: two gloo processes, each passing its own batch (of 7 and of 5 samples), get the top
    eigenvalue and trace of one process over both batches (the products, loss and sample counts summed with
    Runtime.all_sum)."""
    model, batches, _, _ = mlp_problem()
    params = params_of(model)
    one = hessian_eigenvalue(model, params, batches, method="lanczos", tol=1e-8).value
    one_trace = hessian_trace(model, params, batches, probes=10).mean
    out = tmp_path / "result"
    mp.spawn(_rank, args=(str(tmp_path / "store"), str(out)), nprocs=2)
    for rank in range(2):
        result = torch.load(f"{out}.{rank}")
        assert result["top"] == pytest.approx(one, rel=1e-10) and result["trace"] == pytest.approx(one_trace, rel=1e-10)


def test_a_shard_is_each_batch_split_over_the_processes():
    """Shard(batches, r, w): rank r's slice of each batch; the slices of all ranks are the batch, in order, and a
    rank whose slice of a small batch is empty skips it (the operator's sums weigh each slice by its size)."""
    _, batches, _, _ = mlp_problem()  # batches of 7 and 5
    batches = [*batches, (batches[0][0][:2], batches[0][1][:2])]  # and one of 2: rank 2 of 3 gets nothing
    shards = [list(Shard(batches, r, 3)) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 2]
    for i, (x, y) in enumerate(batches):
        parts = [s[i] for s in shards if i < len(s)]
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
    with pytest.raises(ConfigError, match="rank 3 of 3"):
        Shard(batches, 3, 3)


def test_curvature_paths_measures_a_point_two_paths_share_once():
    """A curve and its segment share their ends: curvature_paths measures each end once (the rows equal, no more
    products), and its tables are curvature_along's of each path."""
    a, b = conv_bn(0, torch.float32), conv_bn(1, torch.float32)
    bend = {k: v + 0.1 for k, v in params_of(conv_bn(2, torch.float32)).items()}
    wa, wb = params_of(a), params_of(b)
    curve = Curve(conv_bn(3, torch.float32), wa, wb, "bezier", 3)
    with torch.no_grad():
        curve.bends.copy_(torch.cat([bend[k].reshape(-1) for k in wa])[None])
    segment = Curve(conv_bn(4, torch.float32), wa, wb, "bezier", 2)
    calls = []

    def counted(logits, y):
        calls.append(1)
        return F.cross_entropy(logits, y)

    bn_batches, loss_batches = image_batches(torch.float32, sizes=(8,), seed=4), image_batches(torch.float32)
    options = dict(loss=counted, iters=8, probes=3)
    ts = [0.0, 0.5, 1.0]
    tables = curvature_paths({"curve": curve, "segment": segment}, ts, bn_batches, loss_batches, **options)
    both = len(calls)
    calls.clear()
    alone = {
        n: curvature_along(p.template, p, ts, bn_batches, loss_batches, **options)
        for n, p in (("curve", curve), ("segment", segment))
    }
    assert both < len(calls), "the shared ends were measured twice"
    for name in ("curve", "segment"):
        pd.testing.assert_frame_equal(tables[name], alone[name], check_exact=False, rtol=1e-9)
    assert (
        tables["curve"]
        .iloc[[0, 2]]
        .reset_index(drop=True)
        .equals(tables["segment"].iloc[[0, 2]].reset_index(drop=True))
    )
