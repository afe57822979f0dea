"""The official-style reference of the bench (tools.official_loops) against modeconn, and modeconn against it.

The two are written independently: the official code's per-layer curve network (``num_bends`` parameters per
parameter, weights formed per layer every forward, coefficients as tensor operations) and modeconn's flat
``Curve``. They must agree on the network's output at any t, on ‖φ_θ(t)‖², on the gradient that reaches the
bends, and on the BatchNorm statistics a point's recalibration leaves — so each checks the other, and the
bench's speed-up figures compare like with like.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from modeconn.bn import recalibrate
from modeconn.curves import Curve
from modeconn.errors import ConfigError
from modeconn.models import create_model
from tools import official_loops


def _pair(seed: int, batch_norm: bool, kind: str = "bezier", num_bends: int = 3):
    def net(s: int):
        torch.manual_seed(s)
        return create_model("convfc", 4, in_channels=1, input_size=16, width=4, fc_width=16, batch_norm=batch_norm)

    start, end = net(seed + 1).state_dict(), net(seed + 2).state_dict()
    ours = Curve(net(seed), start, end, kind, num_bends)
    theirs = official_loops.CurveNet(net(seed), start, end, kind, num_bends)
    # Move the bends off the segment, the same way in both.
    with torch.no_grad():
        noise = torch.randn(ours.bends.shape, generator=torch.Generator().manual_seed(seed)) * 0.05
        ours.bends.add_(noise)
    points = ours.control_points()
    with torch.no_grad():
        prefixes = {id(layer): name for name, layer in theirs.net.named_modules()}
        for layer in theirs.curve_layers:
            for name in layer.names:
                key = f"{prefixes[id(layer)]}.{name}"
                for j in range(num_bends):
                    getattr(layer, f"{name}_{j}").copy_(points[key][j])
    return ours, theirs


def test_official_curvenet_starts_at_the_endpoints_with_its_bends_on_the_segment():
    """CurveNet's own endpoint import and linear initialisation, against modeconn's Curve made alike."""
    torch.manual_seed(0)
    nets = [create_model("convfc", 4, in_channels=1, input_size=16, width=4, fc_width=16) for _ in range(3)]
    start, end = nets[1].state_dict(), nets[2].state_dict()
    ours, theirs = Curve(nets[0], start, end, "bezier", 4), official_loops.CurveNet(nets[0], start, end, "bezier", 4)
    x = torch.randn(4, 1, 16, 16)
    for t in (0.0, 0.4, 1.0):
        torch.testing.assert_close(ours(x, t), theirs(x, torch.tensor([t])), rtol=1e-4, atol=1e-5)
    net = theirs.net
    torch.testing.assert_close(net.conv_part[0].weight_0, start["conv_part.0.weight"])
    torch.testing.assert_close(net.conv_part[0].weight_3, end["conv_part.0.weight"])
    middle = start["fc_part.4.bias"] + (end["fc_part.4.bias"] - start["fc_part.4.bias"]) / 3
    torch.testing.assert_close(net.fc_part[4].bias_1, middle)


@pytest.mark.parametrize(("kind", "num_bends"), [("bezier", 3), ("bezier", 4), ("polychain", 4)])
def test_official_curvenet_and_modeconn_curve_agree_at_every_t(kind, num_bends):
    ours, theirs = _pair(0, batch_norm=False, kind=kind, num_bends=num_bends)
    x = torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8) % 4
    for t in (0.0, 0.3, 0.5, 0.77, 1.0):
        logits, sq_norm = ours(x, t, l2=True)
        reference = theirs(x, torch.tensor([t]))
        torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(sq_norm, theirs.l2, rtol=1e-5, atol=1e-5)
        # The gradient of CE + 0.5 wd ‖φ(t)‖² that reaches each interior bend.
        wd = 5e-3
        ours.bends.grad = None
        (F.cross_entropy(logits, y) + 0.5 * wd * sq_norm).backward()
        theirs.zero_grad()
        (F.cross_entropy(reference, y) + official_loops.curve_regularizer(wd)(theirs)).backward()
        mine = {k: v[1:-1] for k, v in _stacked(ours, ours.bends.grad).items()}
        prefixes = {id(layer): name for name, layer in theirs.net.named_modules()}
        for layer in theirs.curve_layers:
            for name in layer.names:
                key = f"{prefixes[id(layer)]}.{name}"
                for j in range(1, num_bends - 1):
                    grad = getattr(layer, f"{name}_{j}").grad
                    torch.testing.assert_close(mine[key][j - 1], grad, rtol=1e-4, atol=1e-6, msg=f"{key} bend {j}")
                assert getattr(layer, f"{name}_0").grad is None, "the official endpoints are fixed"


def _stacked(curve: Curve, flat_bends: torch.Tensor) -> dict[str, torch.Tensor]:
    """A tensor shaped like the bends, as per-parameter [n, *shape] (zero rows at the endpoints)."""
    n = curve.num_bends
    full = torch.zeros(n, flat_bends.shape[1])
    full[1:-1] = flat_bends
    stack = curve._relayout(full, to_nhwc=False)
    return {k: v.reshape(n, *s) for k, v, s in zip(curve.names, stack.split(curve.sizes, dim=1), curve.shapes)}


def test_official_update_bn_matches_recalibrate():
    ours, theirs = _pair(3, batch_norm=True)
    x = torch.randn(96, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    batches = [(x[i : i + 32], torch.zeros(32, dtype=torch.long)) for i in range(0, 96, 32)]
    t = 0.4
    weights = {k: v.detach() for k, v in ours.weights(t).items()}
    recalibrate(ours.template, batches, forward=lambda b: torch.func.functional_call(ours.template, weights, (b,)))
    seen = official_loops.update_bn(batches, theirs, torch.device("cpu"), t=torch.tensor([t]))
    assert seen == 96
    ours_bn = {k: v for k, v in ours.template.state_dict().items() if "running" in k}
    theirs_bn = {k.replace(".kind", ""): v for k, v in theirs.net.state_dict().items() if "running" in k}
    assert set(ours_bn) == set(theirs_bn)
    for key, value in ours_bn.items():
        torch.testing.assert_close(value, theirs_bn[key], rtol=1e-4, atol=1e-5, msg=key)
    result = official_loops.evaluate(
        batches, theirs, torch.device("cpu"), official_loops.curve_regularizer(0.0), t=torch.tensor([t])
    )
    ours.template.eval()  # the recalibrated statistics, as the official test's eval mode
    logits = ours(x, t)
    assert result["images"] == 96
    assert result["nll"] == pytest.approx(F.cross_entropy(logits, torch.zeros(96, dtype=torch.long)).item(), rel=1e-4)


def test_official_trainer_trains_and_reports_images_per_second():
    torch.manual_seed(0)
    model = create_model("convfc", 4, in_channels=1, input_size=16, width=4, fc_width=16)
    x = torch.randn(64, 1, 16, 16)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    loader = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    trainer = official_loops.OfficialTrainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), loader, torch.device("cpu")
    )
    before = F.cross_entropy(model(x), y).item()
    assert trainer.run(20) > 0
    assert F.cross_entropy(model(x), y).item() < before
    # A finite list of batches is cycled, never exhausted: 100 batches from 4, in order.
    stream = list(itertools.islice(official_loops.batches_forever(loader), 100))
    assert len(stream) == 100 and all(b[0] is loader[i % 4][0] for i, b in enumerate(stream))


def test_official_curvenet_refuses_a_layer_it_has_no_curve_version_of():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.PReLU(), torch.nn.Flatten())
    state = model.state_dict()
    with pytest.raises(ConfigError, match="PReLU"):
        official_loops.CurveNet(model, state, state, "bezier", 3)
