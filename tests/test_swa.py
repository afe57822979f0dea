"""SWA of snapshots: the running mean against torch.optim.swa_utils and a closed form, its resume round trip,
BatchNorm recalibration of the averaged network against swa_utils.update_bn."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn

from modeconn.swa import WeightAverage, averaged_model, revert_sync_batchnorm


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5), nn.BatchNorm1d(5)
    )


def batches(n: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 1, 8, 8, generator=g), torch.zeros(16, dtype=torch.long)) for _ in range(n)]


def test_running_mean_is_the_mean_of_the_snapshots_and_matches_swa_utils():
    snaps = [net(s) for s in range(5)]
    avg, reference = WeightAverage(), AveragedModel(snaps[0])
    for m in snaps:
        avg.update(m)
        reference.update_parameters(m)  # its first call copies the weights (n_averaged = 0)
    assert avg.n == 5
    ref = dict(reference.module.named_parameters())
    for name, _ in snaps[0].named_parameters():
        closed = torch.stack([dict(m.named_parameters())[name].detach() for m in snaps]).mean(0)
        assert torch.allclose(avg.mean[name], closed, atol=1e-6), f"{name}: not the mean of the snapshots"
        assert torch.allclose(avg.mean[name], ref[name], atol=1e-6), f"{name}: differs from AveragedModel"


def test_state_round_trips_through_a_saved_file():
    """Averaging 2 snapshots, saving (as the resume state does), loading and averaging 2 more equals 4 at once."""
    snaps = [net(s) for s in range(4)]
    whole, first = WeightAverage(), WeightAverage()
    for m in snaps:
        whole.update(m)
    for m in snaps[:2]:
        first.update(m)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = WeightAverage()
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    for m in snaps[2:]:
        resumed.update(m)
    assert resumed.n == 4
    for name, w in whole.mean.items():
        assert torch.equal(resumed.mean[name], w), f"{name}: resumed average differs"


def test_averaged_model_recalibrates_bn_like_update_bn_and_leaves_the_model_alone():
    snaps = [net(s) for s in range(3)]
    avg = WeightAverage()
    for m in snaps:
        avg.update(m)
    last = snaps[-1]
    before = {k: v.clone() for k, v in last.state_dict().items()}
    swa = averaged_model(last, avg, batches())
    assert not swa.training
    reference = net(99)
    reference.load_state_dict(last.state_dict())
    with torch.no_grad():
        for name, p in reference.named_parameters():
            p.copy_(avg.mean[name])
    update_bn(batches(), reference)
    for name, value in reference.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(swa.state_dict()[name], value, atol=1e-5), f"{name}: differs from update_bn"
    x = batches(1, seed=5)[0][0]
    assert torch.allclose(swa(x), reference.eval()(x), atol=1e-5)
    for k, v in last.state_dict().items():
        assert torch.equal(v, before[k]), f"{k}: averaged_model changed the training model"


def test_sync_batchnorm_is_reverted_for_the_single_process_pass():
    plain = net(0)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(net(0))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    back = revert_sync_batchnorm(synced)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in back.modules())
    assert back.state_dict().keys() == plain.state_dict().keys()
    x = batches(1)[0][0]
    assert torch.allclose(back.eval()(x), plain.eval()(x))
    avg = WeightAverage()
    avg.update(synced)
    swa = averaged_model(synced, avg, batches())  # a train-mode pass on one process: no collective
    assert torch.allclose(swa(x), averaged_model(plain, avg, batches())(x), atol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match="at least one snapshot"):
        averaged_model(net(0), WeightAverage(), batches())
    avg = WeightAverage()
    avg.update(net(0))
    with pytest.raises(ValueError, match="not those averaged"):
        avg.update(nn.Linear(2, 2))


def _fge_plans(data, saved: list):
    """Two FGE-like runs of a small BN network on ``data``; ``saved`` receives each snapshot's state dict."""
    from modeconn.data import Loader
    from modeconn.fge import fge_schedule
    from modeconn.models import create_model
    from modeconn.snapshots import RunPlan
    from modeconn.train import make_sgd

    def plan(seed: int) -> RunPlan:
        def make():
            torch.manual_seed(seed)
            model = create_model("mlp", 3, 1, 12, width=16, depth=2, batch_norm=True)
            train_b = Loader(data.train, data.info, 16, train=True, seed=seed, drop_last=True)
            lr_at, is_snap = fge_schedule(4, 0.05, 0.005)

            def snapshot(i: int) -> bool:
                if is_snap(i):
                    saved.append({k: v.clone() for k, v in model.state_dict().items()})
                return is_snap(i)

            return model, make_sgd(model.parameters(), 0.05, 0.9, 5e-4), train_b, lr_at, snapshot

        return RunPlan(seed, 1, make)

    return [plan(0), plan(1)]


def test_train_runs_swa_is_the_recalibrated_average_of_the_run_snapshots(tiny_data):
    """Against an independent reconstruction: the mean of the snapshots' parameters loaded into a fresh
    network, BN by swa_utils.update_bn on the un-augmented training set, then its test predictions."""
    from modeconn.data import Loader, eval_batches
    from modeconn.models import create_model
    from modeconn.snapshots import train_runs
    from modeconn.train import predict

    test_b = Loader(tiny_data.test, tiny_data.info, 32, train=False)
    bn = eval_batches(tiny_data).bn
    saved: list = []
    records, _ = train_runs(_fge_plans(tiny_data, saved), 2, test_b, tiny_data.test.y, swa_batches=bn)
    per_run = len(saved) // 2
    assert per_run >= 2 and all(r["swa"]["snapshots"] == per_run for r in records)
    for r, record in enumerate(records):
        snaps = saved[r * per_run : (r + 1) * per_run]
        ref = create_model("mlp", 3, 1, 12, width=16, depth=2, batch_norm=True)
        ref.load_state_dict(snaps[-1])
        with torch.no_grad():
            for name, p in ref.named_parameters():
                p.copy_(torch.stack([s[name] for s in snaps]).mean(0))
        update_bn(bn, ref)
        lp, _ = predict(ref.eval(), test_b)
        assert torch.allclose(record["swa"]["logprobs"], lp, atol=1e-4), f"run {r}: SWA predictions differ"
        assert record["swa"]["epoch"] == record["snapshots"][-1]["epoch"]
        # Not a snapshot's own predictions: the average is another network.
        assert not torch.allclose(record["swa"]["logprobs"], record["snapshots"][-1]["logprobs"], atol=1e-4)
    # Without swa_batches, no SWA (SSE's runs).
    plain, _ = train_runs(_fge_plans(tiny_data, []), 2, test_b, tiny_data.test.y)
    assert all("swa" not in r for r in plain)


def test_swa_survives_a_preemption_mid_run(tiny_data, tmp_path):
    """Stopped after epoch 1 of run 0 (its average half built) and resumed: the same SWA, bit for bit."""
    from modeconn.data import Loader, eval_batches
    from modeconn.resume import Preempted, ResumeState
    from modeconn.snapshots import train_runs

    test_b = Loader(tiny_data.test, tiny_data.info, 32, train=False)
    bn = eval_batches(tiny_data).bn
    whole, _ = train_runs(_fge_plans(tiny_data, []), 2, test_b, tiny_data.test.y, swa_batches=bn)
    with pytest.raises(Preempted):
        train_runs(
            _fge_plans(tiny_data, []),
            2,
            test_b,
            tiny_data.test.y,
            resume=ResumeState(tmp_path, "k", stop_after=1),
            swa_batches=bn,
        )
    resumed_state = ResumeState(tmp_path, "k")
    resumed, _ = train_runs(
        _fge_plans(tiny_data, []), 2, test_b, tiny_data.test.y, resume=resumed_state, swa_batches=bn
    )
    assert resumed_state.resumed_after == 1
    for a, b in zip(whole, resumed):
        assert a["swa"]["snapshots"] == b["swa"]["snapshots"]
        assert torch.equal(a["swa"]["logprobs"], b["swa"]["logprobs"]), "resumed SWA differs"
