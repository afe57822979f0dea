"""The standard file layout: every artifact path a stage reads by default, and the "run X first" hint that names
the stage making it.

A stage's own outputs are named by its dvc.yaml entry and passed as options; the defaults here are the paths of
the default pipeline (dvc.yaml at the project root).
"""

from __future__ import annotations

from pathlib import Path

PARAMS = Path("params.yaml")
RESUME_DIR = Path(".modeconn/resume")  # saved training states, outside every DVC output

PREPARED = Path("data/prepared")  # the prepare stage
PREPARED_HINT = "Run `dvc repro prepare` (or python -m stages.prepare)."

ENDPOINTS = Path("data/endpoints")  # train_endpoint: one folder seed_<s> per seed
ENDPOINT_METRICS = Path("metrics/endpoints")  # train_endpoint: seed_<s>.json, .run.json and .csv per seed
ENDPOINT_HINT = "Run `dvc repro train_endpoint` (the seed must be in train.seeds)."

CURVE_HINT = "Run `dvc repro fit_curve` to create it."  # the fitted curve, curve.pt


def prepared_files(prepared: Path) -> tuple[Path, Path]:
    """The files of the prepare stage's folder (what a resume fingerprint reads)."""
    return prepared / "data.pt", prepared / "meta.json"


def endpoint_dir(endpoints: Path, seed: int) -> Path:
    """The folder of seed ``seed``'s endpoint in ``endpoints``: its checkpoints (model.pt, epoch_<e>.pt) and
    predictions (test_logprobs.pt, val_logprobs.pt)."""
    return Path(endpoints) / f"seed_{seed}"


def endpoint_model(endpoints: Path, seed: int) -> Path:
    """The final checkpoint of seed ``seed``'s endpoint."""
    return endpoint_dir(endpoints, seed) / "model.pt"


def endpoint_metrics(metrics: Path, seed: int) -> Path:
    """The metrics JSON of seed ``seed``'s endpoint in the folder ``metrics`` (:data:`ENDPOINT_METRICS`)."""
    return Path(metrics) / f"seed_{seed}.json"
