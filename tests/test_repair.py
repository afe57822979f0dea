"""REPAIR (Jordan et al. 2023) as library calls on tiny networks and random tensors (no workspace): the statistics
against a direct computation, the folded network against the hook-corrected one, the identity when both
endpoints are one network, parameters only, and a lower midpoint loss after weight matching."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from modeconn.align import align_endpoints
from modeconn.data import EvalBatches
from modeconn.errors import ModeconnError
from modeconn.path import measure_path
from modeconn.points import at_point
from modeconn.repair import (
    ChannelStats,
    activation_stats,
    corrected,
    default_layers,
    fold,
    interpolate_stats,
    measure_path_repaired,
    repair,
    repaired_path,
)
from modeconn.runtime import Runtime, as_channels_last


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))


def convnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(24, 3)
    )


def bn_convnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(24, 3),
    )


# (builder, the layers REPAIR corrects by default: the hidden Conv/Linear outputs, at the BatchNorm after one)
NETS = {"mlp": (mlp, ["1", "3"]), "convnet": (convnet, ["0", "2"]), "bn_convnet": (bn_convnet, ["1", "4"])}


def params_of(build, seed: int, spread: float = 1.0) -> dict[str, torch.Tensor]:
    """The parameters of a freshly initialised network (seeded), scaled by ``spread``, biases shifted at random (so
    that channels have means and deviations far from 0 and 1) and BatchNorm scales γ too, some of them negative
    (where the signs of γ differ, BN recalibration alone does not give REPAIR's targets)."""
    torch.manual_seed(seed)
    net = build()
    g = torch.Generator().manual_seed(seed + 100)
    noise = {"bias": 0.3, "weight": 1.0}  # a 1-D weight is a BatchNorm's γ
    return {
        k: (spread * v + (noise[k.rsplit(".")[-1]] * torch.randn(v.shape, generator=g) if v.dim() == 1 else 0)).detach()
        for k, v in net.named_parameters()
    }


def batches(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random 2×4×4 inputs in batches of unequal size (16, 16, 7): a mean of batch means would be wrong."""
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(39, 2, 4, 4, generator=g) + 0.5
    y = torch.randint(0, 3, (39,), generator=g)
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, 39, 16)]


def direct_stats(template: nn.Module, forward, data, layers) -> dict[str, ChannelStats]:
    """The reference: every output of each layer collected, then torch.std_mean over all but the channel dim."""
    outs = {name: [] for name in layers}
    modules = dict(template.named_modules())
    handles = [
        modules[name].register_forward_hook(lambda m, i, y, name=name: outs[name].append(y.detach().double()))
        for name in layers
    ]
    with torch.no_grad():
        for x, _ in data:
            forward(x)
    for h in handles:
        h.remove()
    stats = {}
    for name, ys in outs.items():
        y = torch.cat(ys).movedim(-1 if isinstance(modules[name], nn.Linear) else 1, 0).flatten(1)  # (C, values)
        std, mean = torch.std_mean(y, dim=1, correction=0)
        stats[name] = ChannelStats(mean, std, y.shape[1])
    return stats


def outputs(template: nn.Module, params, data) -> torch.Tensor:
    forward = at_point(template, params, data)
    with torch.no_grad():
        return torch.cat([forward(x) for x, _ in data])


@pytest.mark.parametrize("net", list(NETS))
def test_default_layers_are_the_hidden_outputs_before_the_nonlinearity(net):
    build, layers = NETS[net]
    assert default_layers(build(), batches()[0][0][:2]) == layers


@pytest.mark.parametrize("net", list(NETS))
def test_activation_stats_are_exact_over_every_sample_and_position(net):
    build, layers = NETS[net]
    template, data = build(), batches()
    params = params_of(build, 0)
    got = activation_stats(template, params, data, runtime=Runtime())
    want = direct_stats(template, at_point(template, params, data), data, layers)
    assert list(got) == layers
    for name in layers:
        assert got[name].count == want[name].count, name
        torch.testing.assert_close(got[name].mean, want[name].mean, atol=1e-10, rtol=1e-10, msg=name)
        torch.testing.assert_close(got[name].std, want[name].std, atol=1e-10, rtol=1e-10, msg=name)


@pytest.mark.parametrize("net", list(NETS))
def test_repair_leaves_a_network_unchanged_when_both_endpoints_are_it(net):
    build, layers = NETS[net]
    template, data = build(), batches()
    params = params_of(build, 0)
    stats = activation_stats(template, params, data)
    for t in (0.0, 0.5, 1.0):
        repaired = repair(template, params, stats, stats, t, data)
        assert list(repaired.corrections) == layers
        for name, c in repaired.corrections.items():
            torch.testing.assert_close(c.scale, torch.ones_like(c.scale), atol=1e-6, rtol=0, msg=name)
        torch.testing.assert_close(outputs(template, repaired.params, data), outputs(template, params, data),
                                   atol=1e-5, rtol=1e-5)  # fmt: skip


@pytest.mark.parametrize("net", list(NETS))
def test_repaired_layers_have_the_interpolated_statistics_and_folding_keeps_the_function(net):
    build, layers = NETS[net]
    template, data, t = build(), batches(), 0.3
    a, b = params_of(build, 0, spread=1.5), params_of(build, 1, spread=0.7)
    point = {k: (1 - t) * a[k] + t * b[k] for k in a}
    stats_a, stats_b = activation_stats(template, a, data), activation_stats(template, b, data)
    repaired = repair(template, point, stats_a, stats_b, t, data)
    assert set(repaired.params) == set(point) and repaired.method == "repair"

    # The targets computed here from the endpoints' outputs; the repaired network's outputs measured directly.
    ref_a = direct_stats(template, at_point(template, a, data), data, layers)
    ref_b = direct_stats(template, at_point(template, b, data), data, layers)
    after = direct_stats(template, at_point(template, repaired.params, data), data, layers)
    before = direct_stats(template, at_point(template, point, data), data, layers)
    for name in layers:
        mean_t = (1 - t) * ref_a[name].mean + t * ref_b[name].mean
        std_t = (1 - t) * ref_a[name].std + t * ref_b[name].std
        torch.testing.assert_close(after[name].mean, mean_t, atol=1e-4, rtol=0, msg=f"{name}: mean")
        torch.testing.assert_close(after[name].std, std_t, atol=1e-4, rtol=0, msg=f"{name}: std")
        assert (before[name].std - std_t).abs().max() > 1e-2, f"{name}: nothing to repair; a vacuous test"
        target = interpolate_stats(stats_a[name], stats_b[name], t)
        torch.testing.assert_close(target.mean, mean_t, atol=1e-8, rtol=0, msg=name)

    # The unfolded form: θ(t) with each correction applied after its layer by a hook (BN recalibrated with them).
    with corrected(template, repaired.corrections):
        hooked = outputs(template, point, data)
    torch.testing.assert_close(outputs(template, repaired.params, data), hooked, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fold(template, point, repaired.corrections)[f"{layers[0]}.weight"],
                               repaired.params[f"{layers[0]}.weight"])  # fmt: skip


def test_gpu_settings_forced_on_the_cpu_bf16_and_channels_last():
    build, layers = NETS["convnet"]
    rt = Runtime(precision="bf16", channels_last=True)
    template = rt.prepare(build())
    data = [(rt.batch(x), y) for x, y in batches()]
    a, b = params_of(build, 0, spread=1.5), params_of(build, 1, spread=0.7)
    a, b = ({k: as_channels_last(v) for k, v in p.items()} for p in (a, b))  # as a prepared network's
    point = {k: (a[k] + b[k]) / 2 for k in a}
    stats_a = activation_stats(template, a, data, runtime=rt)
    stats_b = activation_stats(template, b, data, runtime=rt)
    repaired = repair(template, point, stats_a, stats_b, 0.5, data, runtime=rt)
    assert repaired.params["0.weight"].is_contiguous(memory_format=torch.channels_last)
    assert all(repaired.params[k].dtype == torch.float32 for k in point)
    after = activation_stats(template, repaired.params, data, runtime=rt)
    for name in layers:
        target = interpolate_stats(stats_a[name], stats_b[name], 0.5)
        torch.testing.assert_close(after[name].mean, target.mean, atol=0.05, rtol=0.02, msg=name)
        torch.testing.assert_close(after[name].std, target.std, atol=0.05, rtol=0.02, msg=name)


def test_a_state_dict_with_buffers_is_refused_and_parameters_are_what_is_taken():
    template, data = bn_convnet(), batches()
    state = copy.deepcopy(template.state_dict())  # parameters and BatchNorm running statistics
    params = dict(template.named_parameters())
    stats = activation_stats(template, params, data)
    with pytest.raises(ModeconnError, match="buffers"):
        activation_stats(template, state, data)
    with pytest.raises(ModeconnError, match="buffers"):
        repair(template, state, stats, stats, 0.5, data)
    with pytest.raises(ModeconnError, match="missing"):
        repair(template, {k: v for k, v in params.items() if k != "7.bias"}, stats, stats, 0.5, data)


def test_the_reset_variant_is_bn_recalibration_and_wrong_inputs_say_what_to_do():
    data = batches()
    template = bn_convnet()
    params = {k: v.detach() for k, v in template.named_parameters()}
    stats = activation_stats(template, params, data)
    reset = repair(template, params, stats, stats, 0.5, data, method="reset")
    assert reset.corrections == {} and reset.params == params
    plain = mlp()
    plain_params = {k: v.detach() for k, v in plain.named_parameters()}
    plain_stats = activation_stats(plain, plain_params, data)
    with pytest.raises(ModeconnError, match="has none"):
        repair(plain, plain_params, plain_stats, plain_stats, 0.5, data, method="reset")
    with pytest.raises(ModeconnError, match="method must be"):
        repair(plain, plain_params, plain_stats, plain_stats, 0.5, data, method="renorm")
    with pytest.raises(ModeconnError, match=r"t must be in \[0, 1\]"):
        repair(plain, plain_params, plain_stats, plain_stats, 1.5, data)
    with pytest.raises(ModeconnError, match="no bias"):
        activation_stats(template, params, data, layers=["0"])  # measuring is fine ...
        repair(template, params, {"0": stats["1"]}, {"0": stats["1"]}, 0.5, data)  # ... folding is not
    with pytest.raises(ModeconnError, match="is a ReLU"):
        activation_stats(plain, plain_params, data, layers=["2"])
    with pytest.raises(ModeconnError, match="no module named"):
        activation_stats(plain, plain_params, data, layers=["fc"])
    with pytest.raises(ModeconnError, match="endpoint B"):
        repair(plain, plain_params, plain_stats, {"1": plain_stats["1"]}, 0.5, data)


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(32, 32)
        self.out = nn.Linear(32, 3)

    def forward(self, x):
        return self.out(torch.relu(self.fc(torch.relu(self.fc(x.flatten(1))))))


def test_a_layer_called_twice_per_forward_is_refused():
    template = Shared()
    params = {k: v.detach() for k, v in template.named_parameters()}
    with pytest.raises(ModeconnError, match="more than once"):
        activation_stats(template, params, batches(), layers=["fc"])


def teacher_data(n: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """16-dim Gaussian inputs, 4 classes from a random tanh teacher (not separable by the students' first layer)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 16, generator=g)
    w1, w2 = torch.randn(16, 32, generator=g), torch.randn(32, 4, generator=g)
    return x, (torch.tanh(x @ w1) @ w2).argmax(1)


def student(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)
    )


def test_repair_lowers_the_train_loss_of_the_aligned_midpoint():
    x, y = teacher_data()
    data = [(x[i : i + 256], y[i : i + 256]) for i in range(0, len(x), 256)]
    ends = []
    for seed in (3, 4):  # two initialisations, 60 full-batch steps of SGD each
        net = student(seed)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        for _ in range(60):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
        ends.append({k: v.detach() for k, v in net.named_parameters()})
    template = student(0)
    a, (b, _, _) = ends[0], align_endpoints(template, ends[0], ends[1], x[:2])
    midpoint = {k: (a[k] + b[k]) / 2 for k in a}

    def loss(params) -> float:
        with torch.no_grad():
            return F.cross_entropy(functional_call(template, params, (x,)), y).item()

    stats_a, stats_b = activation_stats(template, a, data), activation_stats(template, b, data)
    assert list(stats_a) == ["0", "2", "4"]
    repaired = repair(template, midpoint, stats_a, stats_b, 0.5, data)
    ends_loss = (loss(a) + loss(b)) / 2
    # Seen: endpoints 0.38, midpoint 0.48, repaired 0.45 (a third of the barrier gone)
    assert loss(repaired.params) < loss(midpoint) - 0.2 * (loss(midpoint) - ends_loss), (
        f"midpoint {loss(midpoint):.4f}, repaired {loss(repaired.params):.4f}, endpoints {ends_loss:.4f}"
    )


@pytest.mark.parametrize("net", list(NETS))
def test_along_a_path_each_point_gets_the_ends_statistics_interpolated_and_the_ends_stay(net):
    """repaired_path / measure_path_repaired: the ends' statistics measured once, each point repaired towards their
    interpolation at its own t (checked against activation_stats of the repaired point), the ends unchanged."""
    build, layers = NETS[net]
    template, data = build(), batches()
    a, b = params_of(build, 0), params_of(build, 1, spread=1.5)

    def path(t: float) -> dict[str, torch.Tensor]:
        return {k: torch.lerp(a[k], b[k], t) for k in a}

    at = repaired_path(template, path, data)
    ends = [activation_stats(template, path(t), data, layers) for t in (0.0, 1.0)]
    for t in (0.0, 0.3, 1.0):
        got = activation_stats(template, at(t), data, layers)
        for name in layers:
            want = interpolate_stats(ends[0][name], ends[1][name], t)
            torch.testing.assert_close(got[name].mean, want.mean, atol=1e-5, rtol=1e-5, msg=f"{name} at t={t}")
            torch.testing.assert_close(got[name].std, want.std, atol=1e-5, rtol=1e-5, msg=f"{name} at t={t}")
    for t in (0.0, 1.0):
        torch.testing.assert_close(outputs(template, at(t), data), outputs(template, path(t), data),
                                   atol=1e-4, rtol=1e-4)  # fmt: skip
    r = measure_path_repaired(template, path, [0.0, 0.5, 1.0], EvalBatches(data, data, data, None))
    plain = measure_path(template, path, [0.0, 1.0], EvalBatches(data, data, data, None))
    assert list(r.rows["t"]) == [0.0, 0.5, 1.0]
    for i, j in ((0, 0), (2, 1)):  # the ends measure as the unrepaired ends
        assert r.rows["test_nll"][i] == pytest.approx(plain.rows["test_nll"][j], rel=1e-4), net
    if net == "bn_convnet":  # the reset variant is the path as it is (BN recalibration happens when measuring)
        reset = repaired_path(template, path, data, method="reset")
        assert all(torch.equal(reset(0.5)[k], path(0.5)[k]) for k in a)
