"""Training is deterministic; the one training loop adds no random draw and resumes bit for bit; checkpoints
round-trip; the device rule; FGE snapshots land on LR minima."""

from __future__ import annotations

import pytest
import torch

from modeconn import schedules
from modeconn.data import Loader
from modeconn.errors import CheckpointError, ConfigError, TrainingError
from modeconn.fge import cycle_iterations, fge_schedule
from modeconn.io import build_from_checkpoint, load_checkpoint, save_checkpoint
from modeconn.loop import Training, run_epochs
from modeconn.models import from_spec
from modeconn.resume import Preempted, ResumeState
from modeconn.runtime import CPU, Runtime, resolve_device, seed_everything
from modeconn.snapshots import SnapshotCollector, load_snapshots, save_snapshots
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


class Shuffled:
    """Tensor batches in an order drawn from their own generator (as a Loader's), no data module involved."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, size: int, seed: int):
        self.x, self.y, self.size = x, y, size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.y) // self.size

    def __iter__(self):
        order = torch.randperm(len(self.y), generator=self.generator)
        for k in range(len(self)):
            idx = order[k * self.size : (k + 1) * self.size]
            yield self.x[idx], self.y[idx]


def tiny_training() -> Training:
    """A small network with BatchNorm and dropout (the global stream) on tensor batches, fixed seeds."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 3)
    )
    batches = Shuffled(x, y, 16, seed=1)
    lr_at = lambda i: schedules.standard_lr((i - 1) / (3 * len(batches)), 0.1)  # noqa: E731
    return Training(model, make_sgd(model.parameters(), 0.1, 0.9, 5e-4), batches, cross_entropy_step(model), lr_at)


class Counter:
    """State the caller keeps beside the training (here: the epochs it measured), saved and restored with it."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def state_dict(self) -> dict:
        return {"seen": list(self.seen)}

    def load_state_dict(self, state) -> None:
        self.seen = list(state["seen"])


def test_the_loop_adds_no_random_draw_to_train_epoch():
    """run_epochs trains exactly as calling train_epoch epoch after epoch does (the loop every stage had)."""
    reference = tiny_training()
    iteration = 1
    for _ in range(3):
        reference.module.train()
        _, iteration = train_epoch(
            reference.loss_fn, reference.optimizer, reference.batches, reference.lr_at, iteration, CPU
        )
    looped = tiny_training()
    history = run_epochs(looped, 3)
    assert [r["epoch"] for r in history.rows] == [1, 2, 3] and looped.iteration == iteration == 13
    for (k, a), b in zip(reference.module.state_dict().items(), looped.module.state_dict().values()):
        assert torch.equal(a, b), f"{k}: the loop trained differently from train_epoch"


def test_the_loop_stopped_after_epoch_1_and_resumed_ends_where_an_uninterrupted_loop_ends(tmp_path):
    whole, counted = tiny_training(), Counter()
    measure = lambda epoch, stats: counted.seen.append(epoch) or {"measured": epoch}  # noqa: E731
    history = run_epochs(whole, 3, measure=measure, extra=counted)
    stopped, first = tiny_training(), Counter()
    with pytest.raises(Preempted):
        run_epochs(
            stopped,
            3,
            resume=ResumeState(tmp_path, "k", stop_after=1),
            measure=lambda e, s: first.seen.append(e) or {"measured": e},
            extra=first,
        )
    torch.manual_seed(12345)  # another process: its own random state, which the saved one replaces
    resumed, again = tiny_training(), Counter()
    state = ResumeState(tmp_path, "k")
    rest = run_epochs(
        resumed,
        3,
        resume=state,
        saved=state.load(),
        measure=lambda e, s: again.seen.append(e) or {"measured": e},
        extra=again,
    )
    assert rest.resumed_after == 1 and again.seen == [1, 2, 3] == counted.seen  # epoch 1 from the saved state
    timing = ("seconds", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in rest.rows] == [
        {k: v for k, v in r.items() if k not in timing} for r in history.rows
    ]
    assert resumed.iteration == whole.iteration
    for (k, a), b in zip(whole.module.state_dict().items(), resumed.module.state_dict().values()):
        assert torch.equal(a, b), f"{k}: the resumed loop ends elsewhere"
    for a, b in zip(whole.optimizer.state.values(), resumed.optimizer.state.values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"]), "momentum differs"


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
    collector = SnapshotCollector(model, test_b, is_snap, len(batches))
    run_epochs(Training(model, opt, batches, cross_entropy_step(model), lr_at, on_step=collector.on_step), 2)
    snaps = collector.snapshots
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


def test_snapshots_file_round_trips_and_a_foreign_file_is_named(tmp_path):
    runs = [{"seed": 0, "start_epoch": 1, "epochs": 2, "cost": 3, "snapshots": [{"logprobs": torch.zeros(2, 3)}]}]
    save_snapshots(tmp_path / "fge" / "snapshots.pt", runs, torch.tensor([0, 1]))
    blob = load_snapshots(tmp_path / "fge" / "snapshots.pt")
    assert blob["format"] == "modeconn.snapshots/1" and blob["val_labels"] is None
    assert torch.equal(blob["runs"][0]["snapshots"][0]["logprobs"], torch.zeros(2, 3))
    torch.save({"runs": runs}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt is not a modeconn snapshots file. Run fge"):
        load_snapshots(tmp_path / "other.pt", hint="Run fge.")
    with pytest.raises(CheckpointError, match="not found"):
        load_snapshots(tmp_path / "missing.pt")
