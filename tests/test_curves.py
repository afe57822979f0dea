"""Curves: coefficients against closed forms, endpoints exact for every model, gradients, training,
export of a point, and BatchNorm recalibration against torch.optim.swa_utils.update_bn."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from modeconn import ensemble
from modeconn.bn import recalibrate
from modeconn.curves import Curve, bezier_coefficients, check_curve_args, curve_loss, polychain_coefficients, segment_of
from modeconn.errors import CheckpointError, ConfigError
from modeconn.models import create_model, list_models
from modeconn.points import forward_at
from modeconn.runtime import CPU
from modeconn.train import make_sgd, predict, train_epoch
from modeconn.weights import flat, sq_norm

TS = torch.linspace(0, 1, 101)
COEFFS = {"bezier": bezier_coefficients, "polychain": polychain_coefficients}

SMALL_ARGS = {
    "preresnet": {"depth": 20},
    "wideresnet": {"depth": 10, "widen_factor": 1},
    "convfc": {"width": 4, "fc_width": 16},
    "mlp": {"width": 16},
}


def pair(name, seed_a=0, seed_b=1, **kw):
    args = {**SMALL_ARGS.get(name, {}), **kw}
    torch.manual_seed(seed_a)
    a = create_model(name, 5, in_channels=1, input_size=28, **args)
    torch.manual_seed(seed_b)
    b = create_model(name, 5, in_channels=1, input_size=28, **args)
    return a, b


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("coeffs", [bezier_coefficients, polychain_coefficients])
def test_coefficients_nonnegative_and_partition_of_unity(coeffs, n):
    c = coeffs(TS, n)
    assert c.shape == (101, n)
    assert (c >= 0).all()
    assert torch.allclose(c.sum(1), torch.ones(101, dtype=c.dtype))


def test_bezier_closed_form():
    t = TS.double()
    c = bezier_coefficients(t, 3)
    assert torch.allclose(c, torch.stack([(1 - t) ** 2, 2 * t * (1 - t), t**2], 1))
    c4 = bezier_coefficients(t, 4)
    assert torch.allclose(c4[:, 1], 3 * t * (1 - t) ** 2) and torch.allclose(c4[:, 2], 3 * t**2 * (1 - t))


@pytest.mark.parametrize("n", [3, 4, 6])
def test_polychain_hits_each_bend_and_is_linear_between(n):
    for k in range(n):
        c = polychain_coefficients(k / (n - 1), n)
        expected = torch.zeros(n, dtype=c.dtype)
        expected[k] = 1
        assert torch.equal(c, expected)
    # One bend: the paper's formula 2(tθ + (0.5 − t)ŵ1) on [0, 0.5].
    for t in (0.1, 0.3, 0.5):
        c = polychain_coefficients(t, 3)
        assert c[0].item() == pytest.approx(2 * (0.5 - t)) and c[1].item() == pytest.approx(2 * t)
    for t in (0.6, 0.9):
        c = polychain_coefficients(t, 3)
        assert c[1].item() == pytest.approx(2 * (1 - t)) and c[2].item() == pytest.approx(2 * (t - 0.5))


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("kind", ["bezier", "polychain"])
def test_curve_ends_are_the_endpoints_exactly(name, kind):
    a, b = pair(name)
    curve = Curve(copy.deepcopy(a), a.state_dict(), b.state_dict(), kind, 3)
    with torch.no_grad():
        curve.bends[0].add_(0.1)  # move the bends off the segment
    w0, w1 = curve.weights(0.0), curve.weights(1.0)
    for n, p in a.named_parameters():
        assert torch.equal(w0[n], p), n
    for n, p in b.named_parameters():
        assert torch.equal(w1[n], p), n


def test_curve_formula_and_segment_init():
    a, b = pair("mlp")
    sa, sb = a.state_dict(), b.state_dict()
    curve = Curve(copy.deepcopy(a), sa, sb, "bezier", 3)
    # Initialised on the segment: θ = (ŵ1 + ŵ2) / 2, and a Bezier with collinear equidistant bends is the segment.
    name = "net.0.weight" if "net.0.weight" in sa else next(iter(dict(a.named_parameters())))
    assert torch.allclose(curve.control_points()[name][1], (sa[name] + sb[name]) / 2)
    for t in (0.2, 0.7):
        assert torch.allclose(curve.weights(t)[name], (1 - t) * sa[name] + t * sb[name], atol=1e-6)
    theta = torch.randn_like(sa[name])
    with torch.no_grad():
        curve.unflat(curve.bends[0])[name].copy_(theta)  # a view into the flat bend
    t = 0.3
    expected = (1 - t) ** 2 * sa[name] + 2 * t * (1 - t) * theta + t**2 * sb[name]
    assert torch.allclose(curve.weights(t)[name], expected, atol=1e-6)


def test_gradients_reach_only_interior_bends(tiny_data, loader_of):
    a, b = pair("convfc", batch_norm=True)
    template = create_model("convfc", 5, in_channels=1, input_size=28, **SMALL_ARGS["convfc"], batch_norm=True)
    curve = Curve(template, a.state_dict(), b.state_dict(), "bezier", 4)
    trainable = [n for n, p in curve.named_parameters() if p.requires_grad]
    assert trainable == ["bends"] and curve.bends.shape == (2, sum(p.numel() for p in template.parameters()))
    before = {k: curve.get_buffer(k).clone() for k in ("start", "end")}
    bends_before = curve.bends.detach().clone()
    x = torch.randn(8, 1, 28, 28)
    y = torch.randint(0, 5, (8,))
    opt = make_sgd([curve.bends], 0.1, 0.9, 0.0)
    loss, _ = curve_loss(curve, 5e-4, torch.Generator().manual_seed(0))(x, y)
    loss.backward()
    for k in range(2):
        for name, g in curve.unflat(curve.bends.grad[k]).items():
            assert g.abs().sum() > 0, f"no gradient for parameter {name} of bend {k + 1}"
    assert all(p.grad is None for p in curve.template.parameters())
    opt.step()
    for k, v in before.items():
        assert torch.equal(curve.get_buffer(k), v), f"endpoint buffer {k} changed"
    assert not torch.equal(curve.bends, bends_before)


def test_curve_objective_is_ce_plus_l2_of_the_point_not_of_the_bends():
    """curve_loss = CE(f(x; φ(t)), y) + 0.5·wd·‖φ(t)‖², checked on an ordinary network loaded with φ(t)."""
    a, b = pair("mlp")
    curve = Curve(copy.deepcopy(a), a.state_dict(), b.state_dict(), "polychain", 3)
    with torch.no_grad():
        for theta in curve.bends:
            theta.add_(0.3)  # move the bend off the segment so that ‖θ‖ and ‖φ(t)‖ differ
    x, y, wd = torch.randn(16, 1, 28, 28), torch.randint(0, 5, (16,)), 0.01
    loss, _ = curve_loss(curve, wd, torch.Generator().manual_seed(0))(x, y)
    t = torch.rand((), generator=torch.Generator().manual_seed(0)).item()  # the t that curve_loss drew
    assert 0.3 < t < 0.5
    net = copy.deepcopy(a)
    state = {}
    bend = curve.unflat(curve.bends[0].detach())
    for name, wa in a.named_parameters():
        state[name] = 2 * (t * bend[name] + (0.5 - t) * wa)  # the paper's polychain on [0, 0.5]
    net.load_state_dict(state, strict=False)
    point = torch.nn.utils.parameters_to_vector(net.parameters())
    expected = torch.nn.functional.cross_entropy(net(x), y) + 0.5 * wd * point.pow(2).sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    bends_l2 = curve.bends.pow(2).sum()
    assert abs(bends_l2.item() - point.pow(2).sum().item()) > 1e-2  # the two regularisers would differ
    assert sq_norm(curve.weights(t)).item() == pytest.approx(point.pow(2).sum().item(), rel=1e-5)


def test_bad_curve_args_and_incompatible_endpoints():
    with pytest.raises(ConfigError, match="at least 3 bends"):
        check_curve_args("bezier", 2)
    with pytest.raises(ConfigError, match="unknown"):
        check_curve_args("spline", 3)
    a, _ = pair("mlp")
    torch.manual_seed(0)
    wide = create_model("mlp", 5, in_channels=1, input_size=28, width=32)
    with pytest.raises(CheckpointError, match="different architectures"):
        Curve(copy.deepcopy(a), a.state_dict(), wide.state_dict())
    conv = create_model("convfc", 5, in_channels=1, input_size=28, width=4, fc_width=16)
    with pytest.raises(CheckpointError, match="different architectures"):
        Curve(copy.deepcopy(a), a.state_dict(), conv.state_dict())


class UserNet(nn.Module):
    """A module a researcher might write: not in the registry, with BatchNorm."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.head(h.mean((2, 3)))


def _train(model, batches, epochs=4, lr=0.05):
    opt = make_sgd(model.parameters(), lr, 0.9, 0.0)
    step = lambda x, y: (nn.functional.cross_entropy(model(x), y), model(x))  # noqa: E731
    it = 1
    for _ in range(epochs):
        _, it = train_epoch(step, opt, batches, lambda i: lr, it, CPU)
    return model


def test_user_module_trains_along_a_curve(tiny_data, loader_of):
    train_b = loader_of(tiny_data.train, tiny_data.info, 16, train=True, seed=0)
    torch.manual_seed(0)
    a = _train(UserNet(), train_b)
    torch.manual_seed(1)
    b = _train(UserNet(), train_b)
    curve = Curve(UserNet(), a.state_dict(), b.state_dict(), "bezier", 3)
    opt = make_sgd([curve.bends], 0.05, 0.9, 0.0)
    step = curve_loss(curve, 0.0, torch.Generator().manual_seed(0))
    losses, it = [], 1
    for _ in range(6):
        stats, it = train_epoch(step, opt, train_b, lambda i: 0.05, it, CPU)
        losses.append(stats.loss)
    assert losses[-1] < losses[0]
    assert not torch.equal(curve.unflat(curve.bends[0])["conv.weight"], (a.conv.weight + b.conv.weight).detach() / 2)


def test_bn_recalibration_equals_update_bn(tiny_data, loader_of):
    torch.manual_seed(0)
    model = UserNet()
    batches = loader_of(tiny_data.train, tiny_data.info, 20, train=False)  # last batch smaller on purpose
    reference = copy.deepcopy(model)
    update_bn(batches, reference)
    recalibrate(model, batches)
    assert torch.allclose(model.bn.running_mean, reference.bn.running_mean, atol=1e-6)
    assert torch.allclose(model.bn.running_var, reference.bn.running_var, atol=1e-6)
    assert model.bn.momentum == reference.bn.momentum == 0.1


def test_bn_recalibration_of_a_curve_point_and_export(tiny_data, loader_of):
    """Recalibrating the curve's template at φ(t) equals update_bn on a plain copy holding φ(t); the
    point exported as a checkpoint predicts exactly as the curve at t."""
    torch.manual_seed(0)
    a, b = UserNet(), UserNet()
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.3 * torch.randn_like(p))
    curve = Curve(UserNet(), a.state_dict(), b.state_dict(), "bezier", 3)
    with torch.no_grad():
        curve.bends[0].mul_(1.5)
    t = 0.35
    batches = loader_of(tiny_data.train, tiny_data.info, 32)
    test_b = loader_of(tiny_data.test, tiny_data.info, 16)
    weights = {k: v.detach() for k, v in curve.weights(t).items()}
    recalibrate(curve.template, batches, forward=forward_at(curve.template, weights))
    plain = UserNet()
    plain.load_state_dict({**plain.state_dict(), **weights})
    update_bn(batches, plain)
    assert torch.allclose(curve.template.bn.running_mean, plain.bn.running_mean, atol=1e-6)
    assert torch.allclose(curve.template.bn.running_var, plain.bn.running_var, atol=1e-5)
    exported = UserNet()
    exported.load_state_dict(curve.state_at(t))
    exported.eval()
    curve.template.eval()
    lp_curve, y = predict(forward_at(curve.template, weights), test_b, CPU)
    lp_export, _ = predict(exported, test_b, CPU)
    assert torch.allclose(lp_curve, lp_export, atol=1e-5)
    assert ensemble.accuracy(lp_curve, y) == ensemble.accuracy(lp_export, y)


def test_recalibrate_without_bn_is_a_no_op(tiny_data, loader_of):
    model = create_model("mlp", 3, in_channels=1, input_size=12, width=8)
    assert recalibrate(model, loader_of(tiny_data.train, tiny_data.info)) is False


def test_segment_and_length():
    a, b = pair("mlp")
    curve = Curve(copy.deepcopy(a), a.state_dict(), b.state_dict(), "polychain", 3)
    seg = segment_of(curve, copy.deepcopy(a))
    d = (flat(dict(b.named_parameters())) - flat(dict(a.named_parameters()))).norm().item()
    # Length of the segment over a grid equals ‖ŵ2 − ŵ1‖; the polychain through a bend off the segment is longer.
    ts = torch.linspace(0, 1, 5).tolist()

    def length(path):
        pts = [flat(path.weights(t)) for t in ts]
        return sum((q - p).norm().item() for p, q in zip(pts, pts[1:]))

    assert length(seg) == pytest.approx(d, rel=1e-4)
    with torch.no_grad():
        for p in curve.bends:
            p.add_(torch.randn_like(p))
    mid = flat(curve.weights(0.5))
    ends = flat(curve.weights(0.0)), flat(curve.weights(1.0))
    expected = (mid - ends[0]).norm().item() + (ends[1] - mid).norm().item()
    assert length(curve) == pytest.approx(expected, rel=1e-4)
    assert length(curve) > d
    assert math.isfinite(length(curve))


class _Tied(nn.Module):
    """A network whose first and last layers share one weight (tied parameters)."""

    def __init__(self):
        super().__init__()
        self.encode = nn.Linear(6, 6)
        self.mid = nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6), nn.ReLU())
        self.decode = nn.Linear(6, 6)
        self.decode.weight = self.encode.weight

    def forward(self, x):
        return self.decode(self.mid(self.encode(x)))


def test_curve_forward_is_functional_call_at_the_point_and_puts_the_parameters_back():
    """The template runs at φ_θ(t) exactly as torch.func.functional_call runs it (tied weights included), its
    own parameters are back after every forward (after a failing one too), and a changed template (BatchNorm
    converted to SyncBatchNorm after the curve was made) is picked up."""
    torch.manual_seed(0)
    a, b = _Tied().state_dict(), _Tied().state_dict()
    template = _Tied()
    curve = Curve(template, a, b, "bezier", 4)
    with torch.no_grad():
        curve.bends.add_(torch.randn_like(curve.bends) * 0.1)
    own = {name: p for name, p in template.named_parameters()}
    x = torch.randn(5, 6)
    for t in (0.0, 0.35, 1.0):
        expected = torch.func.functional_call(template, curve.weights(t), (x,), strict=False)
        assert torch.equal(curve(x, t), expected), t
        assert all(p is own[name] for name, p in template.named_parameters()), "a parameter was not put back"
    assert template.decode.weight is template.encode.weight
    with pytest.raises(RuntimeError):
        curve(torch.randn(5, 7), 0.5)  # wrong width: the forward fails inside the template
    assert all(p is own[name] for name, p in template.named_parameters()), "not put back after an error"
    template.mid = nn.SyncBatchNorm.convert_sync_batchnorm(template.mid)  # new modules, the same parameters
    expected = torch.func.functional_call(template.eval(), curve.weights(0.6), (x,), strict=False)
    assert torch.equal(curve(x, 0.6), expected)
    assert all(p is own[name] for name, p in template.named_parameters()), "not put back in the new modules"


@pytest.mark.parametrize("kind", ["bezier", "polychain"])
@pytest.mark.parametrize("num_bends", [2, 3, 5, 9])
def test_curve_point_is_the_weighted_sum_of_the_control_points(kind, num_bends):
    """φ_θ(t) against Σ_k c_k θ_k in float64 (the closed-form coefficients), within float32 rounding; the
    point with autograd on (a training step's) and off (evaluation) agree bit for bit, and the ends are
    the endpoints exactly."""
    torch.manual_seed(1)
    a, b = create_model("mlp", 3, in_channels=1, input_size=8), create_model("mlp", 3, in_channels=1, input_size=8)
    curve = Curve(create_model("mlp", 3, in_channels=1, input_size=8), a.state_dict(), b.state_dict(), kind, num_bends)
    with torch.no_grad():
        curve.bends.add_(torch.randn_like(curve.bends))
    stack = torch.cat([curve.start[None], curve.bends.detach(), curve.end[None]]).double()  # (n, P)
    for t in (0.0, 0.137, 1 / 3, 0.5, 0.9, 1.0):
        expected = COEFFS[kind](t, num_bends) @ stack
        with torch.no_grad():
            w = curve.point(t)
        torch.testing.assert_close(w.double(), expected, rtol=0, atol=1e-5 * expected.abs().max().item())
        if num_bends > 2:
            assert torch.equal(curve.point(t).detach(), w), (kind, num_bends, t)
    assert torch.equal(curve.point(0.0), curve.start) and torch.equal(curve.point(1.0), curve.end)


@pytest.mark.parametrize("kind", ["bezier", "polychain"])
@pytest.mark.parametrize("num_bends", [3, 4, 5])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("wd", [0.0, 0.3])
def test_curve_step_gradient_is_autograd_through_the_per_parameter_formula(kind, num_bends, channels_last, wd):
    """The bends' gradient of a training step (the curve's own backward, the L2 term folded in) against
    autograd through an independent formula: each parameter's φ(t) = Σ_k c_k θ_k built in its own shape
    from the control points and run with torch.func.functional_call, the L2 term summed per parameter."""
    torch.manual_seed(2)
    a, b = pair("convfc", batch_norm=True)
    curve = Curve(copy.deepcopy(a), a.state_dict(), b.state_dict(), kind, num_bends)
    with torch.no_grad():
        curve.bends.add_(torch.randn_like(curve.bends) * 0.05)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 5, (8,))
    points = curve.control_points()  # {name: [n, *shape]}, contiguous layout
    if channels_last:
        curve.use_channels_last()
        x = x.contiguous(memory_format=torch.channels_last)
    reference = {name: p.detach().clone().requires_grad_(True) for name, p in points.items()}
    for t in (0.0, 0.29, 0.5, 0.81, 1.0):
        c = COEFFS[kind](t, num_bends).float()
        phi = {name: torch.einsum("k,k...->...", c, p) for name, p in reference.items()}
        if channels_last:  # the same layout as the curve's weights, hence the same convolution kernels
            phi = {n: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for n, v in phi.items()}
        logits = torch.func.functional_call(curve.template, phi, (x,), strict=False)
        expected = nn.functional.cross_entropy(logits, y) + 0.5 * wd * sum(v.pow(2).sum() for v in phi.values())
        grads = torch.autograd.grad(expected, list(reference.values()))
        expected_grad = {name: g[1:-1] for name, g in zip(reference, grads)}  # the interior bends
        out, sq = curve(x, t, l2=True)
        loss = nn.functional.cross_entropy(out, y) + 0.5 * wd * sq
        (grad,) = torch.autograd.grad(loss, curve.bends)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
        got = {name: torch.stack([curve.unflat(row)[name] for row in grad]) for name in reference}
        scale = max(g.abs().max().item() for g in expected_grad.values())  # (a bias before BN has ~0 gradient)
        for name in reference:
            torch.testing.assert_close(got[name], expected_grad[name], rtol=0, atol=1e-5 * scale, msg=name)
        if wd == 0.0:  # the forward without the norm: the same gradient
            (plain,) = torch.autograd.grad(nn.functional.cross_entropy(curve(x, t), y), curve.bends)
            torch.testing.assert_close(plain, grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("channels_last", [False, True])
def test_strided_layout_gives_the_views_of_unflat(channels_last):
    """The (shape, strides, offset) a training step's point is cut with are unflat's views: same values,
    shapes and strides (channels_last conv weights included), for every parameter."""
    a, b = pair("convfc", batch_norm=True)
    curve = Curve(copy.deepcopy(a), a.state_dict(), b.state_dict(), "bezier", 3)
    if channels_last:
        curve.use_channels_last()
    w = torch.randn(curve.start.numel())
    views = curve.unflat(w)
    for name, (shape, stride, offset) in zip(curve.names, curve.strided_layout()):
        cut = w.as_strided(shape, stride, offset)
        assert cut.stride() == views[name].stride() and torch.equal(cut, views[name]), name
    assert any(len(s) == 4 and st[1] == 1 for s, st, _ in curve.strided_layout()) == channels_last


def test_segment_runs_under_autograd_with_nothing_to_train():
    """A 2-bend curve (the segment) has no trainable bend: with autograd on, its forward is the no-grad one,
    builds no graph on the bends, and its norm is ‖φ(t)‖²."""
    a, b = pair("convfc")
    segment = Curve(copy.deepcopy(a), a.state_dict(), b.state_dict(), "bezier", 2)
    x = torch.randn(4, 1, 28, 28)
    logits, sq = segment(x, 0.4, l2=True)
    with torch.no_grad():
        expected, expected_sq = segment(x, 0.4, l2=True)
    assert torch.equal(logits, expected) and torch.equal(sq, expected_sq)
    assert not logits.requires_grad and not sq.requires_grad
    assert sq.item() == pytest.approx(sq_norm(segment.weights(0.4)).item(), rel=1e-6)


def test_same_architecture_names_the_first_checkpoint_that_differs():
    from modeconn.io import same_architecture

    a, b = {"spec": {"name": "mlp", "width": 8}}, {"spec": {"name": "mlp", "width": 16}}
    assert same_architecture([a, a, a], ["x", "y", "z"], "fix it") == a["spec"]
    with pytest.raises(CheckpointError, match=r"^x and z are of different architectures .*: fix it$"):
        same_architecture([a, a, b], ["x", "y", "z"], "fix it")
