"""Silence the libraries' routine chatter at its source, so what reaches the terminal is worth reading.

Lightning's device and tip lines ("GPU available", "TPU available", the litlogger tip), its resume
and stop notices, the deprecation warning its pytree helper raises on every Trainer, MLflow's table
creation INFO lines and Optuna's "study created in memory" are routine on every launch and trial;
warnings and errors still come through. ``launch.py --verbose`` skips this.
"""

from __future__ import annotations

import logging
import os
import warnings

ROUTINE_WARNINGS = (r".*isinstance\(treespec, LeafSpec\).*",)  # pytorch_lightning's _pytree, on every Trainer


def quiet_lightning() -> None:
    """Lightning's INFO lines off (device, tips, resume notices; its warnings stay), routine warnings ignored."""
    for name in ("pytorch_lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in ROUTINE_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


def quiet_driver() -> None:
    """Lightning as above, MLflow and alembic at WARNING, Optuna at WARNING (the launch's process)."""
    import optuna

    quiet_lightning()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # "Downloading artifacts" bars
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
