"""The standard file layout: every artifact path a stage reads by default, and the "run X first" hint that names
the stage making it.

A stage's own outputs are named by its dvc.yaml entry and passed as options; the defaults here are the paths of
the default pipeline (dvc.yaml at the project root).
"""

from __future__ import annotations

from pathlib import Path

from modeconn.errors import CheckpointError
from modeconn.io import load_checkpoint

from .records import run_info_path

PARAMS = Path("params.yaml")
RESUME_DIR = Path(".modeconn/resume")  # saved training states, outside every DVC output

PREPARED = Path("data/prepared")  # the prepare stage
PREPARED_HINT = "Run `dvc repro prepare` (or python -m stages.prepare)."

ENDPOINTS = Path("data/endpoints")  # train_endpoint: one folder seed_<s> per seed
ENDPOINT_METRICS = Path("metrics/endpoints")  # train_endpoint: seed_<s>.json, .run.json and .csv per seed
ENDPOINT_HINT = "Run `dvc repro train_endpoint` (the seed must be in train.seeds)."

CURVE_HINT = "Run `dvc repro fit_curve` to create it."  # the fitted curve, curve.pt
CURVE_EVAL_HINT = "Run `dvc repro eval_curve` to create it."  # its evaluation: curve.pt, segment.pt, aligned.pt


SIMPLEX = Path("data/simplex")  # simplex@<s>: one folder seed_<s> per seed (simplex.pt, predictions.pt)
SIMPLEX_HINT = "Run `dvc repro simplex` (the seed must be in simplex.seeds)."


def prepared_files(prepared: Path) -> tuple[Path, Path]:
    """The files of the prepare stage's folder (what a resume fingerprint reads)."""
    return prepared / "data.pt", prepared / "meta.json"


def endpoint_dir(endpoints: Path, seed: int) -> Path:
    """The folder of seed ``seed``'s endpoint in ``endpoints``: its checkpoints (model.pt, epoch_<e>.pt) and
    predictions (test_logprobs.pt, val_logprobs.pt)."""
    return Path(endpoints) / f"seed_{seed}"


def endpoint_run(seed: int) -> str:
    """The name of seed ``seed``'s endpoint training run (where it keeps its resume state, under
    :data:`RESUME_DIR`)."""
    return f"train_endpoint/seed_{seed}"


def endpoint_model(endpoints: Path, seed: int) -> Path:
    """The final checkpoint of seed ``seed``'s endpoint."""
    return endpoint_dir(endpoints, seed) / "model.pt"


def endpoint_checkpoint_at(endpoints: Path, seed: int, epoch: int, key: str = "fge.start_epoch") -> Path:
    """The checkpoint of seed ``seed``'s endpoint at ``epoch`` (where FGE or a simplex starts; ``key`` the setting
    that names the epoch): epoch_<e>.pt, or model.pt if it is of that epoch; else a CheckpointError saying which
    settings make it."""
    path, final = endpoint_dir(endpoints, seed) / f"epoch_{epoch}.pt", endpoint_model(endpoints, seed)
    if path.is_file():
        return path
    if final.is_file() and load_checkpoint(final, ENDPOINT_HINT).get("epoch") == epoch:
        return final
    raise CheckpointError(
        f"no checkpoint of endpoint seed {seed} at epoch {epoch} ({path} does not exist): add {epoch} to "
        f"train.save_epochs (or set {key} to one of them) and make sure {seed} is in train.seeds, "
        "then `dvc repro`"
    )


def simplex_dir(simplex: Path, seed: int) -> Path:
    """The folder of the simplex fitted from seed ``seed``'s endpoint in ``simplex`` (:data:`SIMPLEX`): simplex.pt
    and predictions.pt (its sampled points', ESPRO's members)."""
    return Path(simplex) / f"seed_{seed}"


def simplex_sources(metrics: Path, seeds, run_info: bool = False) -> dict[Path, str]:
    """The simplexes' metrics of ``seeds`` and the triangle's in the folder ``metrics`` (``run_info``: and their run
    information) → the stage that writes each: what the report reads where there are simplexes (none without)."""
    files = {Path(metrics) / "simplex" / f"seed_{s}.json": f"simplex@{s}" for s in seeds}
    files.update({Path(metrics) / "triangle.json": "triangle"} if seeds else {})
    return {**files, **({run_info_path(path): stage for path, stage in files.items()} if run_info else {})}


def simplex_run(seed: int) -> str:
    """The name of the simplex training run from seed ``seed`` (where it keeps its resume state)."""
    return f"simplex/seed_{seed}"


def endpoint_metrics(metrics: Path, seed: int) -> Path:
    """The metrics JSON of seed ``seed``'s endpoint in the folder ``metrics`` (:data:`ENDPOINT_METRICS`)."""
    return Path(metrics) / f"seed_{seed}.json"


METRICS = Path("metrics")  # every stage's metrics JSON and run information, the tables, the figures, the report
# The files of the metrics folder that the report reads and links to → the stage that writes each.
REPORT_SOURCES = {
    "curve_train.json": "fit_curve",
    "curve.json": "eval_curve",
    "curve_along_t.png": "eval_curve",
    "path_ensembles.json": "path_ensembles",
    "path_ensembles.png": "path_ensembles",
    "barriers.json": "barriers",
    "curvature.json": "curvature",
    "curvature_along_t.png": "curvature",
    "plane.json": "plane",
    "plane_train_loss.png": "plane",
    "plane_test_error.png": "plane",
    "plane_points.json": "plane_points",
    "plane_points_train_loss.png": "plane_points",
    "plane_points_test_error.png": "plane_points",
    "fge.json": "fge",
    "sse.json": "sse",
    "compare.json": "compare",
    "compare.md": "compare",
    "compare.png": "compare",
    "reliability.png": "compare",
}
WIDTH_SUMMARY = ("width.md", "width.png")  # experiments/width/dvc.yaml's summary stage, in its metrics folder
BN_SUMMARY = ("barriers.md",)  # experiments/bn/dvc.yaml's barriers stage, in its metrics folder
INSTABILITY_SUMMARY = ("instability.md", "instability.png")  # experiments/instability/dvc.yaml's summary stage
EMBEDDED = {"width": WIDTH_SUMMARY, "bn": BN_SUMMARY, "instability": INSTABILITY_SUMMARY}  # what the report embeds


def report_sources(metrics: Path, seeds) -> dict[Path, str]:
    """Every file the report reads (and links to) in the folder ``metrics`` → the stage that writes it: the
    endpoints' metrics, then :data:`REPORT_SOURCES`, then the run information of each metrics JSON."""
    files = {endpoint_metrics(Path(metrics) / "endpoints", s): f"train_endpoint@{s}" for s in seeds}
    files.update({Path(metrics) / name: stage for name, stage in REPORT_SOURCES.items()})
    for path, stage in list(files.items()):
        if path.suffix == ".json":
            files[run_info_path(path)] = stage
    return files
