"""The paper in Python: networks from different seeds, a curve between two of them measured along t, and
Fast Geometric Ensembling against the independent networks' ensemble — library calls only (docs/python.md).

The settings are params.yaml's sections as a plain dict (change any); the same calls in the same order as the
DVC stages make them, so the numbers are the pipeline's own for the same params (tests/test_examples.py checks
it on the tests' tiny config).

    dvc repro prepare && python examples/paper.py [params.yaml] [data/prepared]

One process (the stages add sharding and rank-0 writing for torchrun, docs/distributed.md).
"""

from __future__ import annotations

import sys

import pandas as pd
import torch
import yaml

from modeconn import budget, data, fge, path, snapshots, sse
from modeconn.curve_fit import fit_curve
from modeconn.curves import Curve, segment_of
from modeconn.endpoints import train_network
from modeconn.models import from_spec, model_spec
from modeconn.runtime import Runtime, seed_everything

TRAIN_KEYS = ("epochs", "lr", "momentum", "wd")


def pick(section: dict, *keys: str) -> dict:
    return {k: section[k] for k in keys}


def paper(prepared: data.Prepared, p: dict, runtime: Runtime) -> dict:
    info, train, cv, ev, fg, ss = prepared.info, p["train"], p["curve"], p["eval"], p["fge"], p["sse"]
    spec = model_spec(p["model"]["name"], info.num_classes, info.channels, info.size, p["model"].get("args") or {})
    test = data.Loader(prepared.test, info, data.EVAL_BATCH, train=False, channels_last=runtime.channels_last)
    labels = prepared.test.y.cpu()

    def batches(size: int, seed: int) -> data.Loader:  # shuffled and augmented on the device, seeded
        return data.Loader(
            prepared.train, info, size, train=True, seed=seed, drop_last=True, channels_last=runtime.channels_last
        )

    nets = {}
    for seed in train["seeds"]:  # Sec. 2: the standard schedule from different seeds
        seed_everything(seed)
        model = runtime.prepare(from_spec(spec))
        nets[seed] = train_network(
            model, batches(train["batch_size"], seed), test, **pick(train, *TRAIN_KEYS, "save_epochs"), runtime=runtime
        )
    seed_everything(cv["seed"])  # Sec. 3: a curve between two of them, its endpoints fixed
    ends = [nets[s].model.state_dict() for s in cv["endpoints"]]
    curve = runtime.prepare(Curve(from_spec(spec), *ends, cv["type"], cv["num_bends"]))
    fit_curve(curve, batches(cv["batch_size"], cv["seed"]), **pick(cv, *TRAIN_KEYS, "seed"), runtime=runtime)
    seed_everything(ev["seed"])  # measured along t, BatchNorm recalibrated at every point
    keys = ("bn_samples", "train_samples", "seed")
    measuring = data.eval_batches(prepared, ev["batch_size"], **pick(ev, *keys), channels_last=runtime.channels_last)
    ts = torch.linspace(0, 1, ev["num_points"]).tolist()
    paths = {"curve": curve, "segment": runtime.prepare(segment_of(curve, from_spec(spec)))}
    along = {name: path.measure_path(c.template, c, ts, measuring, runtime, wd=cv["wd"]) for name, c in paths.items()}
    # Sec. 5: FGE from a partly trained network (cycling the learning rate, a snapshot per cycle; SWA averages the
    # snapshots), a Snapshot Ensemble from scratch, and both against independent networks at equal budgets kB
    starts = [{"spec": spec, **nets[s].checkpoints[fg["start_epoch"]]} for s in fg["start_seeds"]]
    plans = fge.plans(
        starts,
        fg["start_seeds"],
        lambda s: batches(fg["batch_size"], s),
        **pick(fg, "seed", "start_epoch", "cycle", "lr_1", "lr_2", "momentum", "wd"),
        runtime=runtime,
    )
    swa_bn = data.eval_batches(prepared, channels_last=runtime.channels_last).bn  # the un-augmented training set
    fge_runs, fge_rows = snapshots.train_runs(plans, fg["epochs"], test, labels, runtime, swa_batches=swa_bn)
    seed_everything(ss["seed"])
    model = runtime.prepare(from_spec(spec))
    plan = sse.plan(
        model, batches(ss["batch_size"], ss["seed"]), **pick(ss, "seed", "epochs", "cycles", "lr", "momentum", "wd")
    )
    sse_runs, _ = snapshots.train_runs([plan], ss["epochs"], test, labels, runtime)
    independent = [(nets[s].logprobs, None) for s in train["seeds"]]
    pool = budget.budget_members(train["epochs"], independent, fge_runs, sse_runs, labels)
    budgets = budget.compare_budgets(pool, train["epochs"], p["compare"]["budgets"], p["compare"]["ensemble"])
    return {
        "endpoint_test_error": {s: net.scores()["test_error"] for s, net in nets.items()},
        "curve": path.curve_metrics(along, ev["ensemble"]),  # max error along t, lengths, barriers, ensembles
        "along_t": path.along_t_table(along),  # one row per t: curve and segment side by side
        "fge": fge.summary(fge_runs, fge_rows, labels),  # snapshots, their ensembles, SWA
        "budgets": budgets.tables,  # Ind, SSE, FGE, SWA at 1B, 2B, ...: accuracy, NLL, error, ECE
    }


if __name__ == "__main__":
    params = yaml.safe_load(open(sys.argv[1] if len(sys.argv) > 1 else "params.yaml"))
    runtime = Runtime.resolve()  # CUDA with bf16 and channels_last where there is one
    prepared = data.load_prepared(sys.argv[2] if len(sys.argv) > 2 else "data/prepared", runtime.device)
    result = paper(prepared, params, runtime)
    worst = {name: result["curve"][name]["test_error"]["max"] for name in ("curve", "segment")}
    print(result["along_t"].round(4).to_string())
    print(f"worst test error along t: {worst}")
    print(pd.DataFrame(result["budgets"]["1B"]).T.round(4).to_string())  # Ind, SSE, FGE, SWA at budget 1B
