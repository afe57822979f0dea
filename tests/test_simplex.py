"""Simplexes: Dirichlet(1) sampling is uniform, the Cayley–Menger volume against closed forms, a 1-simplex is the
segment, the step's gradient against autograd, training moves only the free vertices and lowers the loss inside,
points are parameters only."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from modeconn.curves import Curve
from modeconn.data import eval_batches
from modeconn.errors import ConfigError, ModeconnError
from modeconn.models import create_model
from modeconn.path import measure_path
from modeconn.points import check_parameters, measure
from modeconn.simplex import (
    Simplex,
    dirichlet,
    fit_simplex,
    log_volume,
    measure_samples,
    sample_points,
    simplex_loss,
    simplicial_complex,
    volume,
)
from modeconn.train import cross_entropy_step, make_sgd, train_epoch


def mlp(seed, **kw):
    torch.manual_seed(seed)
    return create_model("mlp", 3, in_channels=1, input_size=12, **{"width": 16, **kw})


def params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def embed(coords, dim=40, seed=0):
    """Rows of ``coords`` [k, d] rotated and shifted into R^dim (the volume is invariant under both)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    padded = torch.zeros(len(coords), dim, dtype=torch.float64)
    padded[:, : coords.shape[1]] = coords
    return padded @ q.T + torch.randn(dim, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_dirichlet_is_uniform_on_the_simplex(k):
    n = 20000
    a = dirichlet(k, torch.Generator().manual_seed(0), n)
    assert a.shape == (n, k) and (a >= 0).all() and torch.allclose(a.sum(1), torch.ones(n, dtype=a.dtype))
    assert torch.allclose(a.mean(0), torch.full((k,), 1 / k, dtype=a.dtype), atol=0.01), a.mean(0)
    # Each coordinate of Dirichlet(1, …, 1) is Beta(1, k − 1): CDF 1 − (1 − x)^(k−1). Kolmogorov–Smirnov at 1%.
    for i in range(k):
        x = a[:, i].sort().values
        cdf = 1 - (1 - x) ** (k - 1)
        ecdf = torch.arange(1, n + 1, dtype=x.dtype) / n
        ks = torch.maximum((ecdf - cdf).abs(), (ecdf - 1 / n - cdf).abs()).max()
        assert ks < 1.63 / math.sqrt(n), f"coordinate {i}: KS statistic {ks:.4f}"
    # Uniform also means: the fraction in the sub-simplex of points with α_0 > ½ is its volume share 2^-(k−1).
    assert abs((a[:, 0] > 0.5).double().mean() - 0.5 ** (k - 1)) < 0.01
    assert torch.equal(dirichlet(k, torch.Generator().manual_seed(0), n), a), "seeded: the same draws"


def test_volume_closed_forms():
    a, b = 3.0, 4.5
    triangle = embed(torch.tensor([[0.0, 0.0], [a, 0.0], [0.0, b]], dtype=torch.float64))
    assert volume(triangle).item() == pytest.approx(a * b / 2, rel=1e-9)
    s = 1.7  # regular tetrahedron: alternate corners of a cube of side 2s, edge 2√2·s
    tet = s * torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64)
    edge = 2 * math.sqrt(2) * s
    assert volume(embed(tet, seed=1)).item() == pytest.approx(edge**3 / (6 * math.sqrt(2)), rel=1e-9)
    segment = embed(torch.tensor([[0.0], [2.5]], dtype=torch.float64))
    assert volume(segment).item() == pytest.approx(2.5, rel=1e-12)
    flat = embed(torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]], dtype=torch.float64))
    assert volume(flat).item() == pytest.approx(0.0, abs=1e-6)
    # A random 4-simplex against the Gram determinant: V = sqrt(det(E Eᵀ)) / (k − 1)!, E = θ_i − θ_0.
    v = torch.randn(5, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    e = v[1:] - v[0]
    assert volume(v).item() == pytest.approx(math.sqrt(torch.linalg.det(e @ e.T).item()) / math.factorial(4))


def test_volume_of_network_vertices_and_its_gradient_on_a_flat_simplex():
    template = mlp(0)
    n = sum(p.numel() for p in template.parameters())
    shapes = {k: p.shape for k, p in template.named_parameters()}

    def vertex(flat):
        out, i = {}, 0
        for k, shape in shapes.items():
            out[k] = flat[i : i + math.prod(shape)].reshape(shape)
            i += math.prod(shape)
        return out

    e = torch.eye(n)
    simplex = Simplex(template, [vertex(0 * e[0]), vertex(3 * e[0]), vertex(4 * e[n - 1])], free=0)
    assert simplex.volume() == pytest.approx(6.0, rel=1e-6)
    # The free vertex starts at the fixed ones' centroid (the simplex is flat): a finite gradient, no NaN.
    flat = Simplex(template, [vertex(e[0]), vertex(-e[0])], free=1)
    assert flat.volume() == pytest.approx(0.0, abs=1e-3)
    flat.log_volume().backward()
    assert torch.isfinite(flat.free.grad).all()
    assert log_volume(torch.zeros(2, 3)).item() == pytest.approx(0.5 * math.log(1e-4))


@pytest.mark.parametrize("t", [0.0, 0.25, 0.5, 0.8, 1.0])
def test_a_one_simplex_point_is_the_segment_point(t):
    a, b = params(mlp(0)), params(mlp(1))
    simplex = Simplex(mlp(2), [a, b], free=0)
    segment = Curve(mlp(2), a, b, "bezier", 2)
    got, want = simplex.weights([1 - t, t]), segment.weights(t)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_vertices_are_exact_and_the_point_is_the_barycentric_sum():
    a, b, c = params(mlp(0)), params(mlp(1)), params(mlp(2))
    simplex = Simplex(mlp(3), [a, b], free=[c])
    for i, v in enumerate((a, b, c)):
        corner = simplex.weights([float(j == i) for j in range(3)])
        assert all(torch.equal(corner[k], v[k]) for k in v), f"vertex {i}"
        assert all(torch.equal(simplex.vertex(i)[k], v[k]) for k in v)
    alpha = [0.2, 0.3, 0.5]
    got = simplex.weights(alpha)
    for k in a:
        assert torch.allclose(got[k], 0.2 * a[k] + 0.3 * b[k] + 0.5 * c[k], atol=1e-6)
    centroid = Simplex(mlp(3), [a, b], free=1).vertex(2)
    assert all(torch.allclose(centroid[k], (a[k] + b[k]) / 2) for k in a), "a free vertex starts at the centroid"


@pytest.mark.parametrize("channels_last", [False, True])
def test_step_gradient_is_autograd_through_the_barycentric_sum(channels_last):
    args = {"width": 4, "fc_width": 8}
    make = lambda s: (torch.manual_seed(s), create_model("convfc", 3, in_channels=1, input_size=16, **args))[1]  # noqa: E731
    a, b, c, d = (params(make(s)) for s in range(4))
    simplex = Simplex(make(4), [a, b], free=[c, d], simplexes=[[0, 2, 3], [1, 2, 3]])
    if channels_last:
        simplex.use_channels_last()
    x, y = torch.randn(6, 1, 16, 16), torch.randint(0, 3, (6,))
    coeffs = simplex.coefficient_list([0.1, 0.6, 0.3], simplex=1)
    assert coeffs == [0.0, 0.1, 0.6, 0.3]
    logits, sq = simplex(x, coeffs, l2=True)
    (F.cross_entropy(logits, y) + 0.5 * 1e-3 * sq).backward()
    # Reference: the point as an autograd sum of the vertex dicts, the network through functional_call.
    free = [{k: v.clone().requires_grad_() for k, v in w.items()} for w in (c, d)]
    point = {k: 0.1 * b[k] + 0.6 * free[0][k] + 0.3 * free[1][k] for k in a}
    ref_logits = functional_call(make(4), point, (x,))
    sq_ref = sum(v.pow(2).sum() for v in point.values())
    (F.cross_entropy(ref_logits, y) + 0.5 * 1e-3 * sq_ref).backward()
    assert torch.allclose(logits, ref_logits, atol=1e-5)
    for j, f in enumerate(free):
        got = simplex.unflat(simplex.free.grad[j])
        for k in a:
            assert torch.allclose(got[k], f[k].grad, atol=1e-6), f"free vertex {j}, {k}"


@pytest.fixture
def two_modes(tiny_data):
    """Two tiny MLPs trained from different seeds on the tiny dataset."""
    from modeconn.data import Loader

    modes = []
    for seed in (0, 1):
        model = mlp(seed)
        batches = Loader(tiny_data.train, tiny_data.info, 16, train=True, seed=seed)
        opt, it = make_sgd(model.parameters(), 0.05, 0.9, 0.0), 1
        for _ in range(8):
            _, it = train_epoch(cross_entropy_step(model), opt, batches, lambda i: 0.05, it)
        modes.append(params(model))
    return modes


def interior_loss(simplex, batches, n=12):
    """Mean train loss over points drawn uniformly from the simplex (one fixed draw)."""
    rows = measure_samples(simplex, n, torch.Generator().manual_seed(123), batches)
    return sum(r.train_nll for r in rows) / n


def test_training_moves_only_the_free_vertex_and_lowers_the_interior_loss(tiny_data, two_modes, loader_of):
    batches = eval_batches(tiny_data, 48)
    simplex = Simplex(mlp(5), two_modes, free=1)
    fixed_before = simplex.fixed.clone()
    free_before = simplex.free.detach().clone()
    before = interior_loss(simplex, batches)
    train = loader_of(tiny_data.train, tiny_data.info, 16, train=True, seed=3)
    history = fit_simplex(simplex, train, epochs=6, lr=0.05, momentum=0.9, wd=0.0, volume_weight=0.01, seed=4)
    after = interior_loss(simplex, batches)
    assert torch.equal(simplex.fixed, fixed_before), "the fixed vertices moved"
    assert all(torch.equal(simplex.vertex(i)[k], two_modes[i][k]) for i in (0, 1) for k in two_modes[i])
    assert not torch.equal(simplex.free.detach(), free_before)
    assert len(history.rows) == 6 and all(math.isfinite(r["train_loss"]) for r in history.rows)
    assert after < before, f"mean train loss at sampled interior points {before:.4f} -> {after:.4f}"
    assert simplex.volume() > 1e-3, "the volume term pushed the free vertex off the segment"
    for p in simplex.template.parameters():
        assert p.grad is None and not p.requires_grad, "the template's own parameters are not trained"


def test_the_volume_weight_opens_the_simplex(tiny_data, two_modes, loader_of):
    def volume_after(weight):
        simplex = Simplex(mlp(5), two_modes, free=1)
        train = loader_of(tiny_data.train, tiny_data.info, 16, train=True, seed=3)
        fit_simplex(simplex, train, epochs=3, lr=0.05, momentum=0.9, wd=0.0, volume_weight=weight, seed=4)
        return simplex.volume()

    assert volume_after(0.1) > 2 * volume_after(0.0)


def test_training_is_seeded(tiny_data, two_modes, loader_of):
    def fit():
        simplex = Simplex(mlp(5), two_modes, free=1)
        train = loader_of(tiny_data.train, tiny_data.info, 16, train=True, seed=3)
        fit_simplex(simplex, train, epochs=1, lr=0.05, momentum=0.9, wd=5e-4, volume_weight=0.01, seed=4, samples=2)
        return simplex.free.detach()

    assert torch.equal(fit(), fit())


def test_points_are_parameters_only(tiny_data):
    template = mlp(3, batch_norm=True)  # has buffers (BatchNorm running statistics)
    modes = [params(mlp(s, batch_norm=True)) for s in (0, 1)]
    simplex = Simplex(template, modes, free=1)
    names = [k for k, _ in template.named_parameters()]
    w = simplex.weights([0.2, 0.3, 0.5])
    assert list(w) == names and all(v.dtype == torch.float32 for v in w.values())
    check_parameters(template, w)
    for member in sample_points(simplex, 3, torch.Generator().manual_seed(0)):
        check_parameters(template, member)
    batches = eval_batches(tiny_data, 48)
    assert 0 <= measure(template, w, batches).test_error <= 1
    path = measure_path(template, lambda t: simplex.weights([1 - t, t, 0.0]), [0.0, 0.5, 1.0], batches)
    assert len(path.rows) == 3
    with pytest.raises(ModeconnError, match="parameters only"):
        measure(template, {**template.state_dict(), **w}, batches)


def test_simplicial_complex_shares_the_free_vertices():
    modes = [params(mlp(s)) for s in range(3)]
    cplx = simplicial_complex(mlp(4), modes, free=2)
    assert cplx.simplexes == [[0, 3, 4], [1, 3, 4], [2, 3, 4]] and cplx.num_free == 2
    g = torch.Generator().manual_seed(0)
    faces = []
    for _ in range(300):
        c = cplx.sample(g)
        on = [i for i, ci in enumerate(c) if ci > 0]
        assert sum(c) == pytest.approx(1.0) and on[1:] == [3, 4] and len(on) == 3
        faces.append(on[0])
    assert {faces.count(i) for i in range(3)} <= set(range(70, 131)), "faces drawn uniformly"
    loss_fn = simplex_loss(cplx, 0.0, 0.1, torch.Generator().manual_seed(1))
    loss, _ = loss_fn(torch.randn(4, 1, 12, 12), torch.randint(0, 3, (4,)))
    loss.backward()
    assert cplx.free.grad is not None and torch.isfinite(cplx.free.grad).all()
    assert cplx.log_volume().shape == ()  # three faces' terms, summed


def test_bad_simplexes_are_refused():
    a, b = params(mlp(0)), params(mlp(1))
    with pytest.raises(ConfigError, match="fixed vertex"):
        Simplex(mlp(2), [], free=2)
    with pytest.raises(ConfigError, match="in no simplex"):
        Simplex(mlp(2), [a, b], free=2, simplexes=[[0, 1, 2]])
    with pytest.raises(ConfigError, match="distinct"):
        Simplex(mlp(2), [a, b], free=1, simplexes=[[0, 2, 2]])
    with pytest.raises(ConfigError, match="barycentric"):
        Simplex(mlp(2), [a, b], free=1).weights([0.5, 0.5])
    other = params(create_model("mlp", 3, in_channels=1, input_size=12, width=8))
    with pytest.raises(ModeconnError, match="vertex 1"):
        Simplex(mlp(2), [a, other])
    with pytest.raises(ConfigError, match="nothing to train"):
        fit_simplex(Simplex(mlp(2), [a, b], free=0), [], epochs=1, lr=0.1, momentum=0, wd=0, volume_weight=0, seed=0)


def test_gpu_settings_forced_on_the_cpu_bf16_and_channels_last(tiny_data, loader_of):
    """The CUDA path (bf16 autocast, channels_last conv weights in the flat vertices) on the CPU."""
    from modeconn.runtime import Runtime

    rt = Runtime(precision="bf16", channels_last=True)
    args = {"depth": 8}
    make = lambda s: (torch.manual_seed(s), create_model("preresnet", 3, in_channels=1, input_size=12, **args))[1]  # noqa: E731
    modes = [params(make(s)) for s in (0, 1)]
    plain = Simplex(make(2), modes, free=[params(make(3))])
    simplex = rt.prepare(Simplex(make(2), modes, free=[params(make(3))]))
    assert any(simplex.nhwc), "conv weights relaid out"
    alpha = [0.2, 0.5, 0.3]
    assert all(torch.equal(simplex.weights(alpha)[k], plain.weights(alpha)[k]) for k in modes[0])
    assert simplex.volume() == pytest.approx(plain.volume(), rel=1e-9)
    fixed = [simplex.vertex(i) for i in (0, 1)]
    train = loader_of(tiny_data.train, tiny_data.info, 16, train=True, seed=3, channels_last=True)
    history = fit_simplex(
        simplex, train, epochs=1, lr=0.05, momentum=0.9, wd=5e-4, volume_weight=0.01, seed=0, runtime=rt
    )
    assert math.isfinite(history.rows[0]["train_loss"])
    assert all(torch.equal(simplex.vertex(i)[k], fixed[i][k]) for i in (0, 1) for k in fixed[i])
    rows = measure_samples(
        simplex, 2, torch.Generator().manual_seed(0), eval_batches(tiny_data, 48, channels_last=True), rt
    )
    assert all(0 <= r.test_error <= 1 for r in rows)
