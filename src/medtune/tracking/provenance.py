"""MLflow's own conventions on our runs: who ran them from which code, on which data, and why.

``mlflow.start_run`` fills ``mlflow.user``, ``mlflow.source.*`` and the git commit itself; medtune
creates its runs with ``MlflowClient.create_run`` (one writer, in the driver), which fills nothing, so
the UI showed User "unknown" and no dataset. Here are those tags, the dataset inputs (the UI's
Datasets column, ``run.inputs.dataset_inputs``) and the experiment's description (the UI's
"Description", the ``mlflow.note.content`` tag), written the way MLflow itself writes them.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import subprocess
from pathlib import Path

from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import Dataset as DatasetEntity
from mlflow.entities import DatasetInput, InputTag, SourceType
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import (
    MLFLOW_DATASET_CONTEXT,
    MLFLOW_GIT_COMMIT,
    MLFLOW_RUN_NOTE,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
    MLFLOW_USER,
)

from medtune.data.coco import Dataset
from medtune.data.cocoio import load_coco
from medtune.data.folds import FoldPlan

ENTRY = "launch.py"  # the script every run of a launch comes from
UNKNOWN_USER = "unknown"  # what MLflow itself records when it cannot tell
GIT_TIMEOUT_S = 5  # git answers in milliseconds; a hung git (network filesystem) must not hold a launch
POOL = "train+val"  # cross-validation trains and scores on the pooled train and val splits
TEST = "test"

# The checkout holding src/medtune when the package runs from one (its git commit names the code);
# about code only: data, stores and results live in the project folder (medtune.config.project).
CODE_DIR = Path(__file__).resolve().parents[3]
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the installed medtune package


def standard_tags(*, source: str = ENTRY, project_dir: Path = CODE_DIR) -> dict[str, str]:
    """``mlflow.user``, ``mlflow.source.name`` / ``.type`` and, in a git checkout, ``mlflow.source.git.commit``.

    For every run a launch creates (parent and trials), so the UI's User and Source columns are filled.
    """
    tags = {MLFLOW_USER: user(), MLFLOW_SOURCE_NAME: source, MLFLOW_SOURCE_TYPE: SourceType.to_string(SourceType.LOCAL)}
    commit = git_commit(project_dir)
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit
    return tags


def user() -> str:
    """The login name, or ``unknown`` where there is none (a container's uid without a passwd entry)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError, ImportError):
        return UNKNOWN_USER


def git_commit(project_dir: Path) -> str | None:
    """The commit checked out in ``project_dir`` when it is the top of a git work tree; None otherwise.

    None too without git, after ``GIT_TIMEOUT_S``, or when ``project_dir`` only lies inside another
    repository (a copy of the project in someone's home repo is not that repo's commit).
    """
    try:
        done = subprocess.run(
            ["git", "-C", str(project_dir), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.split()
    if done.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != Path(project_dir).resolve():
        return None
    return lines[1]


def dataset_inputs(dataset: Dataset, folds: FoldPlan | None) -> list[DatasetInput]:
    """One input per split the launch uses: train, val and test, or with cross-validation ``train+val`` and test.

    Each is named ``<dataset>-<split>`` and carries the dataset's fingerprint as its digest: MLflow keeps
    one input per (name, digest) and run, so one shared name would leave a single split. The context is
    the split; ``split_digest`` (a split's own content hash) or ``cv_folds_digest`` (the fold assignment)
    say exactly which images; the profile counts them.
    """
    if folds is None:
        splits = {split: _split(dataset, split) for split in ("train", "val", TEST)}
    else:
        pool = {"cv_folds": str(folds.folds), "cv_folds_digest": folds.digest}
        splits = {POOL: (dataset.root, len(folds.pool_ids), pool), TEST: _split(dataset, TEST)}
    inputs = []
    for split, (source, images, extra) in splits.items():
        meta = MetaDataset(
            LocalArtifactDatasetSource(str(source)), name=f"{dataset.name}-{split}", digest=dataset.fingerprint
        )
        entity = DatasetEntity(**meta.to_dict(), profile=json.dumps({"images": images}))
        tags = [InputTag(MLFLOW_DATASET_CONTEXT, split)] + [InputTag(k, v) for k, v in extra.items()]
        inputs.append(DatasetInput(entity, tags))
    return inputs


def _split(dataset: Dataset, split: str) -> tuple[Path, int, dict[str, str]]:
    """A split's COCO file, its image count and its input tags."""
    images = len(load_coco(dataset.coco_files[split])["images"])
    return dataset.coco_files[split], images, {"split_digest": dataset.content_digests[split][:12]}


def trial_inputs(client: MlflowClient, parent_run_id: str) -> list[DatasetInput]:
    """The parent run's dataset inputs a trial uses: all but the test split, which no trial sees."""
    inputs = client.get_run(parent_run_id).inputs.dataset_inputs
    return [i for i in inputs if {t.key: t.value for t in i.tags}.get(MLFLOW_DATASET_CONTEXT) != TEST]


def describe_experiment(client: MlflowClient, experiment_id: str, description: str) -> None:
    """Give the experiment ``description`` (its UI "Description") unless it already has one.

    A description a user wrote in the UI, or one from an earlier launch, is kept.
    """
    if not description:
        return
    if client.get_experiment(experiment_id).tags.get(MLFLOW_RUN_NOTE):
        return
    client.set_experiment_tag(experiment_id, MLFLOW_RUN_NOTE, description)


SHORT_KEYS = {
    "weight_decay": "wd",
    "augment": "aug",
    "mask_threshold": "thr",
    "bce_weight": "bcew",
    "width": "w",
    "depth": "d",
}


def run_name(config: dict, searched: list[str], trial_id: str) -> str:
    """A short readable summary of a trial's key choices, e.g. ``unet_w16_bce_dice_lr3e-04_1a2b``."""
    parts = []
    for key in searched:
        if key not in config:
            continue
        value, last = config[key], key.split(".")[-1]
        short = SHORT_KEYS.get(last, last[:5])
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, float):
            parts.append(f"{short}{value:.0e}" if abs(value) < 1e-2 else f"{short}{value:.2g}")
        else:
            parts.append(f"{short}{value}")
    return "_".join(parts + [trial_id[:4]])[:250]


CODE_FOLDERS = ("src", "trainables", "benchmarks")


def code_version() -> str:
    """The git commit (with ``-dirty`` when modified), or a content hash of the code outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=CODE_DIR, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=CODE_DIR, capture_output=True, text=True
        )
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        digest = hashlib.sha256()  # the project's own code only: not .venv/, data or results
        code = [p for folder in CODE_FOLDERS for p in sorted((CODE_DIR / folder).rglob("*.py"))]
        code = code + sorted(CODE_DIR.glob("*.py")) if code else sorted(PACKAGE_DIR.rglob("*.py"))  # installed: itself
        for path in code:
            digest.update(path.read_bytes())
        return "sha256:" + digest.hexdigest()[:16]
