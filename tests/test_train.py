"""Training is deterministic; checkpoints round-trip; the device rule; FGE snapshots land on LR minima."""

from __future__ import annotations

import pytest
import torch

from modeconn import schedules
from modeconn.data import Loader
from modeconn.errors import CheckpointError, ConfigError, TrainingError
from modeconn.fge import cycle_iterations, fge_schedule, run_snapshots
from modeconn.io import build_from_checkpoint, load_checkpoint, save_checkpoint
from modeconn.models import from_spec
from modeconn.runtime import CPU, Runtime, resolve_device, seed_everything
from modeconn.train import cross_entropy_step, make_sgd, predict, train_epoch

SPEC = {
    "name": "mlp",
    "num_classes": 3,
    "in_channels": 1,
    "input_size": 12,
    "args": {"width": 16, "depth": 2, "batch_norm": True},
}


def build(spec=SPEC):
    return from_spec(spec)


def train_run(data, seed: int, epochs: int = 2, augment: str = "crop_flip"):
    seed_everything(seed)
    model = build()
    batches = Loader(data.train, data.info, 16, train=True, seed=seed, drop_last=True, augment=augment)
    opt = make_sgd(model.parameters(), 0.05, 0.9, 5e-4)
    total = epochs * len(batches)
    it, stats = 1, []
    for _ in range(epochs):
        model.train()
        s, it = train_epoch(
            cross_entropy_step(model), opt, batches, lambda i: schedules.standard_lr((i - 1) / total, 0.05), it, CPU
        )
        stats.append((s.loss, s.accuracy))
    model.eval()
    lp, y = predict(model, Loader(data.test, data.info, 32, train=False), CPU)
    return model, stats, lp


def test_training_is_deterministic(tiny_data):
    m1, s1, lp1 = train_run(tiny_data, seed=3)
    m2, s2, lp2 = train_run(tiny_data, seed=3)
    assert s1 == s2
    assert torch.equal(lp1, lp2)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    _, s3, _ = train_run(tiny_data, seed=4)
    assert s3 != s1


def test_training_learns(tiny_data):
    _, stats, lp = train_run(tiny_data, seed=0, epochs=10, augment="none")
    assert stats[-1][0] < stats[0][0]
    assert (lp.argmax(1) == tiny_data.test.y).float().mean() > 0.5  # 3 classes: chance is 1/3


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build()
    save_checkpoint(tmp_path / "m.pt", SPEC, model.state_dict(), epoch=7, seed=1)
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt["spec"] == SPEC and ckpt["epoch"] == 7
    again = build_from_checkpoint(ckpt)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found: .*missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="bad.pt is corrupt"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a modeconn checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    model = build()
    wrong = dict(SPEC, args=dict(SPEC["args"], width=8))  # same layers, other shapes
    save_checkpoint(tmp_path / "wrong.pt", wrong, model.state_dict())
    with pytest.raises(CheckpointError, match="do not match"):
        build_from_checkpoint(load_checkpoint(tmp_path / "wrong.pt"), tmp_path / "wrong.pt")


def test_nan_loss_raises(tiny_data):
    model = build(dict(SPEC, args=dict(SPEC["args"], batch_norm=False)))  # BN would tame huge weights
    batches = Loader(tiny_data.train, tiny_data.info, 16, train=True, drop_last=True)
    opt = make_sgd(model.parameters(), 1e12, 0.0, 0.0)
    with pytest.raises(TrainingError, match="NaN or infinite"):
        train_epoch(cross_entropy_step(model), opt, batches, lambda i: 1e12, 1, CPU)


def test_device_rule():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.parametrize("cycle, per_epoch, expected", [(2, 10, 20), (0.5, 10, 6), (0.5, 11, 6), (0.25, 4, 2)])
def test_cycle_iterations_even(cycle, per_epoch, expected):
    assert cycle_iterations(cycle, per_epoch) == expected


def test_fge_snapshots_and_distances(tiny_data):
    seed_everything(0)
    model = build()
    batches = Loader(tiny_data.train, tiny_data.info, 16, train=True, drop_last=True)  # 6 per epoch
    test_b = Loader(tiny_data.test, tiny_data.info, 32, train=False)
    c = cycle_iterations(1 / 3, len(batches))  # 2 iterations
    lr_at, is_snap = fge_schedule(c, 0.05, 0.001)
    opt = make_sgd(model.parameters(), 0.05, 0.9, 0.0)
    snaps = run_snapshots(model, cross_entropy_step(model), opt, batches, test_b, 2, lr_at, is_snap, CPU)
    assert [s.iteration for s in snaps] == [1, 3, 5, 7, 9, 11]
    assert all(lr_at(s.iteration) == pytest.approx(0.001) for s in snaps)
    assert snaps[0].distance != snaps[0].distance  # NaN for the first
    assert all(s.distance > 0 for s in snaps[1:])
    assert all(s.logprobs.shape == (48, 3) for s in snaps)


@pytest.mark.gpu
def test_cuda_training_step_bf16_channels_last(tiny_data):
    """The CUDA path: data on the GPU, bf16 autocast, channels_last; loss finite, CPU and GPU agree roughly."""
    runtime = Runtime.resolve("cuda")
    dev = runtime.device
    seed_everything(0)
    model = runtime.prepare(build())
    data = tiny_data.to(dev)
    batches = Loader(data.train, data.info, 16, train=True, drop_last=True, channels_last=True)
    opt = make_sgd(model.parameters(), 0.05, 0.9, 0.0)
    stats, _ = train_epoch(cross_entropy_step(model), opt, batches, lambda i: 0.05, 1, runtime)
    assert stats.loss == stats.loss and stats.n == 96
