"""What a finished launch deletes: its trials' Ray checkpoints and its trials' scratch folders.

Each trial keeps its best and latest checkpoint (``SearchPolicy.keep_checkpoints``), up to 128 MiB
each for a resnet18; once the winner is tested and logged to MLflow nobody reads them, so a finished
launch deletes them (``launch.py --keep-checkpoints`` keeps them). An interrupted launch keeps
everything: ``--resume`` continues from those checkpoints.

Trials write each checkpoint into a temporary folder before Ray copies it into the experiment
folder; a trial stopped while reporting (ASHA, the end of the search) can leave that folder behind.
They make them under ``scratch_folder(experiment)``, one per launch, which the launch removes.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

CHECKPOINT_GLOB = "trial_*/checkpoint_*"  # Ray's layout: <experiment>/<trial folder>/checkpoint_<index>


def scratch_folder(experiment: Path) -> Path:
    """The launch's folder for its trials' temporary checkpoint copies, in the system temp folder."""
    return Path(tempfile.gettempdir()) / f"medtune-scratch-{experiment.name}"


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def drop_checkpoints(experiment: Path) -> tuple[int, int]:
    """Delete the ``checkpoint_*`` folders of every trial of ``experiment``; returns (folders, bytes).

    Ray's experiment state (``experiment_state-*.json``, ``tuner.pkl``) and each trial's
    ``result.json`` stay: the launch's record besides MLflow.
    """
    folders = [f for f in experiment.glob(CHECKPOINT_GLOB) if f.is_dir()]
    freed = 0
    for folder in folders:
        freed += folder_bytes(folder)
        shutil.rmtree(folder, ignore_errors=True)
    scratch = scratch_folder(experiment)
    if scratch.is_dir():
        freed += folder_bytes(scratch)
        shutil.rmtree(scratch, ignore_errors=True)
    return len(folders), freed


def summary(folders: int, freed: int, experiment: Path) -> str:
    """One line for the launch's output."""
    return (
        f"[launch] deleted {folders} Ray checkpoint folder(s) under {experiment}, {freed / 2**20:.1f} MiB freed "
        "(the winner is in MLflow; --keep-checkpoints keeps them)"
    )
