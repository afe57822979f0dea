"""A curve with dropout trained for a few epochs in this process group (torchrun) or alone (plain python): what
each rank draws, for tests/test_distributed.py to compare.

    python tests/ddp_dropout_worker.py OUT EPOCHS     # under torchrun: one file OUT/rank_<r>.pt per rank

Per step it records the batch shard (images after augmentation, labels), the t of the curve, the first
dropout layer's mask, and how many broadcasts DDP sent (parameters and buffers go once, when wrapped; none
should follow); per epoch the mean training loss over the global batch.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from modeconn.curves import Curve, curve_loss
from modeconn.data import DATASETS, Loader, make_synthetic
from modeconn.models import create_model
from modeconn.runtime import Runtime, seed_everything
from modeconn.train import make_sgd, train_epoch

SEED = 0
BATCH = 32
LR = 0.2


def network(seed: int) -> nn.Module:
    torch.manual_seed(seed)  # the endpoints: the same on every rank
    return create_model("wideresnet", 3, in_channels=1, input_size=12, depth=10, widen_factor=1, dropout=0.5)


def main(out: Path, epochs: int) -> None:
    runtime = Runtime.resolve("cpu", "fp32", "0")
    torch.set_num_threads(1)
    train, _ = make_synthetic(n_train=128, n_test=8, num_classes=3, channels=1, size=12, seed=0)
    info = dataclasses.replace(DATASETS["synthetic"], num_classes=3, channels=1, size=12)
    start, end, template = network(1).state_dict(), network(2).state_dict(), network(3)
    seed_everything(SEED)  # as a stage does: the global streams (dropout) of this rank
    curve = runtime.prepare(Curve(template, start, end, "bezier", 3))
    batches = Loader(
        train, info, BATCH, train=True, augment="crop_flip", seed=SEED, drop_last=True, shard=runtime.shard
    )
    generator = torch.Generator().manual_seed(SEED)  # the t of each step, as fit_curve draws it
    optimizer = make_sgd([curve.bends], LR, 0.9, 0.0)
    step = curve_loss(curve, 5e-4, generator, module=runtime.wrap(curve))

    record: dict = {"x": [], "y": [], "t": [], "mask": [], "loss": [], "broadcasts": 0}
    dropout = next(m for m in curve.template.modules() if isinstance(m, nn.Dropout))
    dropout.register_forward_hook(lambda m, args, output: record["mask"].append(output == 0))
    curve.register_forward_pre_hook(lambda m, args: record["t"].append(float(args[1])))
    sent = dist._broadcast_coalesced

    def counted(*args, **kwargs):  # DDP's broadcast of parameters and buffers
        record["broadcasts"] += 1
        return sent(*args, **kwargs)

    dist._broadcast_coalesced = counted

    def recorded():
        for x, y in batches:
            record["x"].append(x.clone())
            record["y"].append(y.clone())
            yield x, y

    curve.template.train()
    iteration = 1
    for _ in range(epochs):
        stats, iteration = train_epoch(step, optimizer, recorded(), lambda i: LR, iteration, runtime)
        record["loss"].append(stats.loss)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(record, out / f"rank_{runtime.rank}.pt")
    runtime.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
