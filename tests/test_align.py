"""Permutation alignment (Ainsworth et al. 2023): the fx permutation rule over the registry, weight matching
recovering a permuted copy exactly, the loss barrier, and the aligned segment in eval_curve and plane."""

from __future__ import annotations

import copy
import json
import math

import pandas as pd
import pytest
import torch
from torch import nn

from modeconn.align import (
    align_endpoints,
    apply_permutation,
    permutation_spec,
    random_permutations,
    weight_matching,
)
from modeconn.errors import ModeconnError
from modeconn.models import create_model, from_spec, vgg
from modeconn.path import loss_barrier
from stages import eval_curve, plane

from .stage_utils import invoke, tiny_params, write_params

# (name, options, input (C, size), permutation groups counted by hand)
REGISTRY = [
    ("convfc", {"width": 4, "fc_width": 16}, (1, 28), 5),  # 3 convs + 2 hidden Linears
    ("convfc", {"width": 4, "fc_width": 16, "batch_norm": True}, (3, 32), 5),
    ("mlp", {"width": 8, "depth": 2, "batch_norm": True}, (1, 28), 2),
    ("vgg16", {}, (3, 32), 15),  # 13 convs + 2 hidden Linears
    ("vgg16_bn", {}, (1, 28), 15),
    ("vgg19", {}, (1, 28), 18),  # 16 convs + 2
    ("vgg19_bn", {}, (3, 32), 18),
    # basic, 1 block per stage: conv1 + stage 1 share the residual stream (no downsample); per block one
    # inner space; stages 2 and 3 start a stream at their downsample conv: 1 + 1 + 2 + 2
    ("preresnet", {"depth": 8, "block": "basic"}, (3, 32), 6),
    ("preresnet", {"depth": 11, "block": "bottleneck"}, (3, 32), 10),  # conv1, then 2 inner + 1 stream per stage
    ("wideresnet", {"depth": 10, "widen_factor": 1}, (3, 32), 6),  # as the basic PreResNet
]
IDS = [f"{n}-{'-'.join(f'{k}{v}' for k, v in o.items())}-{c}x{s}" for n, o, (c, s), _ in REGISTRY]


@pytest.fixture
def narrow_vgg(monkeypatch):
    """VGG at 1/16 of its widths (the registry's VGG code and graph, small enough for a CPU test)."""
    for depth, stages in list(vgg.CONFIGS.items()):
        monkeypatch.setitem(vgg.CONFIGS, depth, [[max(c // 16, 2) for c in s] for s in stages])


def randomised(name: str, options: dict, channels: int, size: int, seed: int) -> nn.Module:
    """A registry model in eval mode with random weights *and* random BatchNorm affine parameters and running
    statistics (fresh ones are 1 and 0: a permutation of them would go unnoticed)."""
    torch.manual_seed(seed)
    model = create_model(name, 5, in_channels=channels, input_size=size, **options).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def outputs(model: nn.Module, state: dict, x: torch.Tensor) -> torch.Tensor:
    m = copy.deepcopy(model)
    m.load_state_dict(state)
    with torch.no_grad():
        return m.eval()(x)


@pytest.mark.parametrize(("name", "options", "shape", "groups"), REGISTRY, ids=IDS)
def test_a_permuted_copy_computes_the_same_function_and_is_aligned_back(name, options, shape, groups, narrow_vgg):
    channels, size = shape
    model = randomised(name, options, channels, size, seed=0)
    x = torch.randn(6, channels, size, size, generator=torch.Generator().manual_seed(1))
    spec = permutation_spec(model, x[:2])
    assert len(spec.sizes) == groups, f"{name}: groups {spec.sizes}"
    assert model.training is False  # tracing ran the model without switching it to training
    state = model.state_dict()
    perms = random_permutations(spec, seed=3)
    assert all(not torch.equal(p, torch.arange(p.numel())) for p in perms.values() if p.numel() > 2)
    permuted = apply_permutation(spec, state, perms)
    moved = [k for k in state if not torch.equal(state[k], permuted[k])]
    assert any("running_mean" in k for k in moved) == (
        "bn" in name or options.get("batch_norm", False) or "res" in name
    )
    y = outputs(model, state, x)
    assert torch.allclose(outputs(model, permuted, x), y, atol=1e-5, rtol=1e-4), f"{name}: permuting changed f(x)"

    found = weight_matching(spec, state, permuted, seed=0)
    aligned = apply_permutation(spec, permuted, found)
    for k in state:
        err = (aligned[k].float() - state[k].float()).abs().max().item()
        assert err <= 1e-6, f"{name}: {k} not recovered (max error {err})"
    # The aligned segment (1 − t) ŵ + t π(ŵ') is flat (one point); the plain one to the permuted copy is not.
    lerp = lambda s2, t: {k: v.lerp(s2[k], t) if v.is_floating_point() else v for k, v in state.items()}  # noqa: E731
    for t in (0.25, 0.5, 0.75):
        assert torch.allclose(outputs(model, lerp(aligned, t), x), y, atol=1e-5, rtol=1e-4), f"{name} at t={t}"
    assert not torch.allclose(outputs(model, lerp(permuted, 0.5), x), y, atol=1e-3), f"{name}: plain segment flat"


def test_input_and_logits_are_never_permuted_and_a_flatten_carries_its_spatial_multiplicity():
    model = create_model("convfc", 3, in_channels=1, input_size=28, width=4, fc_width=16)
    spec = permutation_spec(model, torch.zeros(2, 1, 28, 28))
    assert [a.dim for a in spec.axes["conv_part.0.weight"]] == [0]  # its input dim is the image's channels
    assert [a.dim for a in spec.axes["fc_part.4.weight"]] == [1] and "fc_part.4.bias" not in spec.axes  # logits
    (fc_in,) = [a for a in spec.axes["fc_part.0.weight"] if a.dim == 1]
    (conv_out,) = spec.axes["conv_part.6.bias"]
    # 28 → 13 → 6 → 2 after three 3x3/2 max pools: the flatten makes 16 channels of 2·2 positions each
    assert fc_in.group == conv_out.group and fc_in.mult == 4 and spec.sizes[fc_in.group] == 16
    # residual additions merge: every block of a stage writes into one stream with the stage's first conv
    res = create_model("preresnet", 3, depth=14, block="basic")  # 2 basic blocks per stage
    rspec = permutation_spec(res, torch.zeros(2, 3, 32, 32))
    group = lambda k: {a.group for a in rspec.axes[k] if a.dim == 0}  # noqa: E731
    assert group("conv1.weight") == group("layer1.0.conv2.weight") == group("layer1.1.conv2.weight")
    assert group("layer2.0.downsample.0.weight") == group("layer2.0.conv2.weight") == group("layer2.1.conv2.weight")
    assert group("layer3.0.downsample.0.weight") == group("layer3.1.conv2.weight") == group("bn.weight")
    assert group("layer2.1.conv2.weight") != group("layer3.1.conv2.weight")
    assert group("layer1.0.conv1.weight") != group("layer1.1.conv1.weight")


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(1, 4, 3), nn.Conv2d(1, 4, 3), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(torch.cat([self.a(x), self.b(x)], dim=1).mean((2, 3)))


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else x


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3, groups=2), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.b(self.a(x)).mean((2, 3)))


@pytest.mark.parametrize(
    ("module", "x", "match"),
    [
        (Concat(), torch.zeros(2, 1, 8, 8), r"op function cat \(graph node 'cat'\)"),
        (DataDependent(), torch.zeros(2, 4), r"cannot trace model DataDependent with torch.fx"),
        (Grouped(), torch.zeros(2, 1, 8, 8), r"Conv2d module 'b' with groups=2"),
    ],
    ids=["cat", "control-flow", "grouped-conv"],
)
def test_a_model_the_rule_cannot_handle_gets_a_clear_error(module, x, match):
    with pytest.raises(ModeconnError, match=match):
        permutation_spec(module, x)


# -----------------------------------------------------------------------------
# Function preservation: a random permutation of every group leaves the logits as they were


def scrambled(model: nn.Module, seed: int, x: torch.Tensor | None = None) -> nn.Module:
    """``model`` in eval mode with every 1-D parameter (biases, BN affine, shifts, layer scales) nudged off its
    init and random BatchNorm running statistics, so that a tensor left out of a permutation changes the
    outputs (fresh BN statistics are 0 and 1; timm's layer scale starts at 1e-6). With ``x``, the statistics
    are first those of ``x`` (deep nets with arbitrary statistics give logits that ignore the input)."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
        if x is not None:
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # a cumulative average: one batch's statistics
            model.train()(x)
        for m in bns:
            m.running_mean.add_(0.2 * m.running_var.sqrt() * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.mul_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def assert_preserved(model: nn.Module, x: torch.Tensor, label: str, seed: int = 3) -> None:
    """A random permutation of every group of ``model``'s spec computes the same logits (within 1e-5 relative,
    in float64: float32 rounding alone reaches 1e-4 through 50 layers of random BN statistics)."""
    model, x = copy.deepcopy(model).double(), x.double()
    spec = permutation_spec(model, x[:2])
    state = model.state_dict()
    permuted = apply_permutation(spec, state, random_permutations(spec, seed=seed))
    assert any(not torch.equal(state[k], permuted[k]) for k in state), f"{label}: nothing was permuted"
    y, y_perm = outputs(model, state, x), outputs(model, permuted, x)
    assert y.std(0).max() > 1e-3, f"{label}: the logits do not depend on the input (the test could not fail)"
    err = (y_perm - y).abs().max().item()
    assert err <= 1e-5 * max(1.0, y.abs().max().item()), f"{label}: permuting changed f(x) by {err:.3g}"


class Shift(nn.Module):
    """A learned shift joins fc1's permuted outputs by an addition (a parameter met by arithmetic)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.shift, self.fc2 = nn.Linear(4, 8, bias=False), nn.Parameter(torch.randn(8)), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x) + self.shift))


class LayerScale(nn.Module):
    """Per-channel scales and shifts on a conv's output in every way they are written: a parameter γ of shape
    (C, 1, 1), γ.reshape(1, -1, 1, 1) (ConvNeXt in timm), γ[:, None, None], a buffer subtracted, a division."""

    def __init__(self, way: str):
        super().__init__()
        self.way, self.conv, self.head = way, nn.Conv2d(2, 6, 3), nn.Linear(6, 3)
        self.gamma = nn.Parameter(torch.rand(6, 1, 1) + 0.5 if way == "c11" else torch.rand(6) + 0.5)
        self.register_buffer("mean", torch.randn(1, 6, 1, 1))

    def forward(self, x):
        h = self.conv(x)  # (B, 6, H, W)
        if self.way == "c11":
            h = h * self.gamma
        elif self.way == "reshape":
            h = h.mul(self.gamma.reshape(1, -1, 1, 1))
        elif self.way == "index":
            h = self.gamma[:, None, None] * h  # the parameter on the left
        elif self.way == "buffer":
            h = (h - self.mean) / self.gamma.view(6, 1, 1)
        return self.head(torch.relu(h).mean((2, 3)))


@pytest.mark.parametrize(
    ("model", "x", "tensors"),
    [
        (Shift(), torch.randn(6, 4), {"shift": [0]}),
        (LayerScale("c11"), torch.randn(6, 2, 7, 7), {"gamma": [0]}),
        (LayerScale("reshape"), torch.randn(6, 2, 7, 7), {"gamma": [0]}),
        (LayerScale("index"), torch.randn(6, 2, 7, 7), {"gamma": [0]}),
        (LayerScale("buffer"), torch.randn(6, 2, 7, 7), {"gamma": [0], "mean": [1]}),
    ],
    ids=["add-shift", "mul-gamma-C11", "mul-gamma-reshape", "gamma-index-left", "sub-buffer-div-view"],
)
def test_a_parameter_joined_to_permuted_channels_by_arithmetic_is_permuted_with_them(model, x, tensors):
    torch.manual_seed(0)
    spec = permutation_spec(scrambled(model, seed=0), x[:2])
    for tensor, dims in tensors.items():
        assert [a.dim for a in spec.axes.get(tensor, [])] == dims, f"{tensor}: axes {spec.axes.get(tensor)}"
        (axis,) = spec.axes[tensor]
        assert spec.axes[f"{'fc1' if tensor == 'shift' else 'conv'}.weight"][-1].group == axis.group
    assert_preserved(model, x, type(model).__name__)


class Untracked(nn.Module):
    """A tensor that reaches the permuted channels through an op the rule cannot follow, or that is not in
    the state dict (a plain attribute): each an error naming it, never a silent pass."""

    def __init__(self, way: str):
        super().__init__()
        self.way, self.fc1, self.fc2 = way, nn.Linear(4, 8), nn.Linear(8, 3)
        self.w = nn.Parameter(torch.randn(2, 8))
        self.plain = torch.randn(8)  # neither parameter nor buffer
        self.register_buffer("scratch", torch.randn(8), persistent=False)  # a buffer, but not in the state dict
        self.g = nn.Parameter(torch.randn(8))
        self.order = list(range(7, -1, -1))

    def forward(self, x):
        h = self.fc1(x)
        if self.way == "reduced":
            h = h + self.w.sum(0)
        elif self.way == "indexed":  # g re-indexed: permuting g as if it were used as is would be wrong
            h = h * self.g[self.order]
        elif self.way == "sliced":
            h = h * self.w[1:].squeeze(0)
        else:
            h = h * (self.plain if self.way == "plain" else self.scratch)
        return self.fc2(h)


@pytest.mark.parametrize(
    ("way", "match"),
    [
        ("reduced", r"'w' reaches a permutable channel space through op function add"),
        ("plain", r"tensor 'plain' acts on a permutable channel space but is not in the state dict"),
        ("non-persistent", r"tensor 'scratch' acts on a permutable channel space but is not in the state dict"),
        ("indexed", r"'g' reaches a permutable channel space through op"),
        ("sliced", r"'w' reaches a permutable channel space through op"),
    ],
)
def test_a_tensor_on_permuted_channels_that_gets_no_axis_is_an_error_naming_it(way, match):
    with pytest.raises(ModeconnError, match=match):
        permutation_spec(Untracked(way), torch.zeros(2, 4))


def test_a_parameter_on_the_logits_or_broadcast_over_channels_needs_no_permutation():
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)
            self.prior, self.temp = nn.Parameter(torch.randn(3, 2)), nn.Parameter(torch.ones(1))

        def forward(self, x):  # an untrackable tensor on the logits, a scalar-like one on a hidden space
            return self.fc2(self.fc1(x) * self.temp) + self.prior.sum(1)

    spec = permutation_spec(Head(), torch.zeros(2, 4))
    assert "prior" not in spec.axes and "temp" not in spec.axes and list(spec.sizes.values()) == [8]


def _build(family: str, name: str) -> nn.Module:
    if family == "torchvision":
        import torchvision

        return torchvision.models.get_model(name, weights=None, num_classes=5)
    timm = pytest.importorskip("timm")
    return timm.create_model(name, pretrained=False, num_classes=5, **({"img_size": 32} if "vit" in name else {}))


# (family, name, None when every permutation must keep the function, else what the error must name)
EXTERNAL = [
    ("torchvision", "resnet18", None),
    ("torchvision", "mobilenet_v2", None),  # depthwise convs, ReLU6
    ("torchvision", "mobilenet_v3_small", None),  # + squeeze-excite (a (B, C, 1, 1) gate), hardswish
    ("torchvision", "efficientnet_b0", None),  # + stochastic depth, SiLU
    ("torchvision", "regnet_y_400mf", r"Conv2d module 'trunk_output\.block1\.block1-0\.f\.b\.0' with groups=6"),
    ("torchvision", "shufflenet_v2_x0_5", r"op function cat"),
    ("timm", "resnet10t", None),  # deep stem, avg-pool downsample
    ("timm", "seresnet18", None),  # squeeze-excite with x.mean((2, 3), keepdim=True)
    ("timm", "mobilenetv3_small_050", None),  # BatchNormAct2d (F.batch_norm), timm's Linear (F.linear)
    ("timm", "efficientnet_b0", None),
    ("timm", "convnext_atto", r"op method \.permute\(\)"),  # channels-last LayerNorm
    ("timm", "vit_tiny_patch16_224", r"op method \.flatten\(\) from \(2, 192, 2, 2\) to \(2, 192, 4\)"),
]


@pytest.mark.parametrize(("family", "name", "error"), EXTERNAL, ids=[f"{f}-{n}" for f, n, _ in EXTERNAL])
def test_alignment_keeps_the_function_of_torchvision_and_timm_families_or_says_what_it_cannot(family, name, error):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model = scrambled(_build(family, name), seed=0, x=x)
    if error is not None:
        with pytest.raises(ModeconnError, match=f"align: model {type(model).__name__}: .*{error}"):
            permutation_spec(model, x[:2])
        return
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert_preserved(model, x, f"{family}/{name}")
    for k, v in model.state_dict().items():  # tracing ran the model in eval mode: no BN statistics moved
        assert torch.equal(v, before[k]), f"{family}/{name}: permutation_spec changed {k}"


def test_a_model_alignment_refuses_stops_eval_curve_with_the_way_out(workspace, tmp_path, monkeypatch):
    """timm's ViT: the stage exits 1 with the library's message and how to skip the aligned segment."""
    pytest.importorskip("timm")
    monkeypatch.chdir(workspace)
    blob = torch.load(workspace / "data/curve/curve.pt", weights_only=True)
    spec = {**blob["spec"], "name": "timm/vit_tiny_patch16_224"}
    spec["args"] = {"img_size": 28, "patch_size": 7, "depth": 1, "embed_dim": 8, "num_heads": 2}
    template = from_spec(spec)
    torch.manual_seed(0)
    blob["spec"] = spec
    blob["control_points"] = {
        k: torch.stack([v + torch.randn_like(v) for _ in range(3)])
        for k, v in template.state_dict().items()
        if k in dict(template.named_parameters())
    }
    (tmp_path / "curve").mkdir()
    torch.save(blob, tmp_path / "curve/curve.pt")
    out = {"metrics": "curve.json", "table": "eval.csv", "wide": "wide.csv", "figure": "along_t.png"}
    args = [x for k, name in out.items() for x in (f"--{k}", tmp_path / name)]
    r = invoke(eval_curve, "--curve", tmp_path / "curve", "--out", tmp_path / "eval", *args, "--device", "cpu")
    assert r.exit_code == 1, r.output
    assert "align: model VisionTransformer: op method .flatten()" in r.output, r.output
    assert "set eval.align: false in params.yaml to skip the aligned segment" in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "curve.json").exists()


def test_weight_matching_brings_two_independent_networks_closer_and_keeps_the_function():
    a, b = (randomised("convfc", {"width": 4, "fc_width": 16, "batch_norm": True}, 1, 28, s) for s in (0, 1))
    wa, wb = dict(a.named_parameters()), dict(b.named_parameters())
    x = torch.randn(4, 1, 28, 28)
    aligned, perms, info = align_endpoints(a, wa, wb, x[:2], seed=0)
    before = math.sqrt(sum(((wa[k] - wb[k]) ** 2).sum().item() for k in wa))
    after = math.sqrt(sum(((wa[k] - aligned[k]) ** 2).sum().item() for k in wa))
    assert info["distance_before"] == pytest.approx(before, rel=1e-6)
    assert info["distance_after"] == pytest.approx(after, rel=1e-6) and after < before
    assert 0 < info["moved_fraction"] <= 1 and info["permutation_groups"] == 5
    # buffers follow the same permutations, so π(b) with its permuted running statistics is b
    spec = permutation_spec(b, x[:2])
    state = apply_permutation(spec, b.state_dict(), perms)
    assert all(torch.equal(state[k], aligned[k]) for k in aligned)
    assert torch.allclose(outputs(b, state, x), outputs(b, b.state_dict(), x), atol=1e-5)


def test_loss_barrier_against_closed_forms():
    t = torch.linspace(0, 1, 11).tolist()
    bump = [1 + 2 * s + 4 * s * (1 - s) for s in t]  # the line 1 + 2t plus a bump of height 1 at t = 0.5
    assert loss_barrier(t, bump) == pytest.approx(1.0)
    assert loss_barrier(t, [3 - s for s in t]) == pytest.approx(0.0, abs=1e-12)  # a straight line
    assert loss_barrier(t, [(s - 0.5) ** 2 for s in t]) == pytest.approx(0.0, abs=1e-12)  # convex: ends only
    # an off-centre peak on a t grid not starting at 0: f = 0 at t = 2 and 2 at t = 4, 5 at t = 2.5
    assert loss_barrier([2.0, 2.5, 3.0, 4.0], [0.0, 5.0, 1.0, 2.0]) == pytest.approx(5.0 - 0.5)
    with pytest.raises(ValueError, match="two grid points"):
        loss_barrier([0.0], [1.0])


@pytest.fixture
def workspace(tiny_workspace):
    """The session's tiny workspace (conftest): the whole pipeline on the tiny config."""
    return tiny_workspace


def test_eval_curve_writes_the_aligned_segment_and_three_barriers(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    rows = pd.read_csv(workspace / "metrics/curve_eval.csv").to_dict("records")
    by_path = {p: [r for r in rows if r["path"] == p] for p in ("curve", "segment", "aligned")}
    assert all(len(v) == 3 for v in by_path.values()) and len(rows) == 9
    assert [r["t"] for r in by_path["aligned"]] == [0.0, 0.5, 1.0]
    ali, seg = by_path["aligned"], by_path["segment"]
    assert ali[0]["train_loss"] == pytest.approx(seg[0]["train_loss"], rel=1e-6)  # both start at ŵ1
    # π(ŵ2) is ŵ2 relabelled: the same function, and BN recalibrated to the same (permuted) statistics
    assert ali[-1]["train_nll"] == pytest.approx(seg[-1]["train_nll"], rel=1e-4)
    assert ali[-1]["test_error"] == pytest.approx(seg[-1]["test_error"], abs=1e-9)
    s = json.loads((workspace / "metrics/curve.json").read_text())
    assert set(s["barrier"]) == {"curve", "segment", "aligned"}
    for name, path_rows in by_path.items():
        for m in ("train_loss", "test_nll", "test_error"):
            f = [r[m] for r in path_rows]
            assert s["barrier"][name][m] == pytest.approx(max(0.0, f[1] - (f[0] + f[2]) / 2), abs=1e-6), (name, m)
    assert s["aligned"]["train_loss"]["start"] == pytest.approx(ali[0]["train_loss"])
    a = s["alignment"]
    assert a["distance_after"] <= a["distance_before"] and a["permutation_groups"] == 5
    assert a["aligned_length"] == pytest.approx(a["distance_after"], rel=1e-4)  # a segment's length is its span
    wide = pd.read_csv(workspace / "metrics/curve_along_t.csv")
    assert {"aligned_train_loss", "curve_train_loss", "segment_train_loss"} <= set(wide.columns)
    stored = torch.load(workspace / "data/curve_eval/aligned.pt", weights_only=True)
    assert stored["logprobs"].shape[0] == 3 and set(stored["perms"]) and stored["labels"].numel() == 96
    assert json.loads((workspace / "metrics/curve.run.json").read_text())["align"] is True


@pytest.mark.parametrize(
    "layout", [["--channels-last", "0"], ["--channels-last", "1"]], ids=["contiguous", "channels_last"]
)
def test_eval_curve_on_a_permuted_copy_has_a_flat_aligned_segment(workspace, tmp_path, monkeypatch, layout):
    """Endpoints ŵ1 and π(ŵ1): the plain segment crosses a barrier, the aligned one is a single point (also
    with the curve's conv weights laid out channels_last, as on a GPU)."""
    monkeypatch.chdir(workspace)
    blob = torch.load(workspace / "data/curve/curve.pt", weights_only=True)
    template = from_spec(blob["spec"])
    start = {k: v[0] for k, v in blob["control_points"].items()}
    spec = permutation_spec(template, torch.zeros(2, 1, 28, 28))
    end = apply_permutation(spec, start, random_permutations(spec, seed=5))
    blob["control_points"] = {k: torch.stack([v[0], v[1], end[k]]) for k, v in blob["control_points"].items()}
    (tmp_path / "curve").mkdir()
    torch.save(blob, tmp_path / "curve/curve.pt")
    out = {"metrics": "curve.json", "table": "eval.csv", "wide": "wide.csv", "figure": "along_t.png"}
    args = [x for k, name in out.items() for x in (f"--{k}", tmp_path / name)]
    r = invoke(eval_curve, "--curve", tmp_path / "curve", "--out", tmp_path / "eval", *args, "--device", "cpu", *layout)
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "curve.json").read_text())
    assert s["alignment"]["distance_after"] < 1e-5 < s["alignment"]["distance_before"]
    assert s["alignment"]["moved_fraction"] > 0.5
    rows = pd.read_csv(tmp_path / "eval.csv").to_dict("records")
    flat = [r["train_loss"] for r in rows if r["path"] == "aligned"]
    assert max(flat) - min(flat) < 1e-4 * flat[0], flat
    assert abs(s["barrier"]["aligned"]["train_loss"]) < 1e-4 < s["barrier"]["segment"]["train_loss"]


def test_plane_draws_the_aligned_projection_and_says_how_far_it_is_from_the_plane(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    r = invoke(plane, "--device", "cpu")
    assert r.exit_code == 0, r.output
    g = torch.load(workspace / "data/plane/grid.pt", weights_only=True)
    P = tiny_params()["eval"]["num_points"]
    assert g["aligned"].shape == (P, 2) and g["aligned_off_plane"].shape == (P,)
    assert torch.allclose(g["aligned"][0], torch.zeros(2, dtype=torch.float64))  # starts at ŵ1, the origin
    s = json.loads((workspace / "metrics/plane.json").read_text())
    off = s["aligned_off_plane"]
    # Pythagoras: ‖π(ŵ2) − ŵ1‖² = α² + β² + (distance from the plane)²
    assert off["endpoint_distance"] ** 2 == pytest.approx(
        off["endpoint_alpha"] ** 2 + off["endpoint_beta"] ** 2 + off["max_distance"] ** 2, rel=1e-6
    )
    assert off["max_distance"] == pytest.approx(g["aligned_off_plane"][-1].item())
    assert json.loads((workspace / "metrics/plane.run.json").read_text())["aligned"] is True
    eval_s = json.loads((workspace / "metrics/curve.json").read_text())
    assert off["endpoint_distance"] == pytest.approx(eval_s["alignment"]["distance_after"], rel=1e-4)


def test_eval_align_off_writes_no_aligned_path(workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, tiny_params(eval__align=False))
    r = invoke(
        eval_curve,
        *("--prepared", workspace / "data/prepared", "--curve", workspace / "data/curve"),
        "--device",
        "cpu",
    )
    assert r.exit_code == 0, r.output
    rows = pd.read_csv(tmp_path / "metrics/curve_eval.csv")
    assert set(rows["path"]) == {"curve", "segment"} and not (tmp_path / "data/curve_eval/aligned.pt").exists()
    s = json.loads((tmp_path / "metrics/curve.json").read_text())
    assert set(s["barrier"]) == {"curve", "segment"} and "alignment" not in s
