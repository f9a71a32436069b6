"""Train one configuration on the K folds of a ``FoldPlan`` in lockstep: epoch 1 of every fold, then epoch 2, ...

Why lockstep: ASHA decides after each epoch whether a trial goes on, so the value it reads must be
comparable between trials at the same epoch. After every round the trial reports the mean over folds
of every metric (the objective TPE and ASHA see), each fold's validation metrics and the standard
deviation over folds; a weak configuration is stopped after its first rounds, for all folds at once.
(Training the folds one after another would give ASHA nothing to compare until a trial's last fold.)

Each fold's state lives in ``FOLD_FILE`` (a full Lightning checkpoint: weights, optimizer, scheduler,
early-stopping counters): a round resumes every fold from its file, trains one epoch and writes it
back. The folder of fold files and ``STATE_FILE`` is the trial's checkpoint, so ``--resume`` restarts
at the round after the last reported one, and the best round's folder holds the K models the driver
publishes. Each fold-epoch is seeded from (seed, fold, epoch): a resumed round trains exactly as it
would have. A fold whose own patience stopped it keeps its last metrics in the later rounds' means.

Plain torch/Lightning, no Ray: the trainable (``trainables.trial``) reports what ``on_round`` gets.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl

from medtune.data.datasets import CachedDataModule
from medtune.data.folds import FoldPlan
from medtune.engine.recipe import POOL, Recipe
from medtune.engine.trainer import make_trainer

FOLD_FILE = "fold{k}.ckpt"
STATE_FILE = "cv_state.json"
PREFIX = "cv/"  # cv/fold{k}/<metric>, cv/sd/<metric> (and cv/mean/<metric> on the launch's run)
FOLD_SPLITS = {"train": POOL, "val": POOL, "test": "test"}  # a fold's data module split -> the recipe's cache


def fold_data(recipe: Recipe, plan: FoldPlan, k: int) -> CachedDataModule:
    """Fold ``k`` of ``plan``: trains on the pool without its rows, validates on them; tests on the test split.

    ``recipe.caches`` (and ``pred_masks``) hold ``pool`` (train+val rows in ``plan`` order) and ``test``.
    """
    subsets = {"train": plan.train_indices(k), "val": plan.val_indices(k)}
    return recipe.datamodule(splits=FOLD_SPLITS, subsets=subsets)


def summarise(per_fold: list[dict[str, float]]) -> dict[str, float]:
    """Fold means under each metric's own name, plus ``cv/fold{k}/<val metric>`` and ``cv/sd/<val metric>``."""
    keys = set.intersection(*(set(m) for m in per_fold)) if per_fold else set()
    out: dict[str, float] = {}
    for key in sorted(keys):
        values = [m[key] for m in per_fold]
        finite = [v for v in values if math.isfinite(v)]
        out[key] = statistics.fmean(finite) if len(finite) == len(values) else math.nan
        if key.startswith("val/"):
            for k, value in enumerate(values):
                out[f"{PREFIX}fold{k}/{key}"] = value
            out[f"{PREFIX}sd/{key}"] = statistics.stdev(values) if len(finite) == len(values) > 1 else math.nan
    return out


def rounds_done(folder: Path) -> int:
    """How many rounds the fold files in ``folder`` have trained (0 for an empty folder)."""
    path = folder / STATE_FILE
    return int(json.loads(path.read_text())["epoch"]) if path.is_file() else 0


def _read_state(folder: Path, folds: int) -> dict:
    path = folder / STATE_FILE
    if path.is_file():
        return json.loads(path.read_text())
    return {"epoch": 0, "done": [False] * folds, "metrics": [{} for _ in range(folds)]}


def train_folds(
    recipe: Recipe,
    plan: FoldPlan,
    folder: Path,
    on_round: Callable[[dict[str, float], bool, Path], None],
    *,
    callbacks: Callable[[], list[pl.Callback]] = list,
) -> None:
    """Train every fold of ``plan`` to ``recipe.max_epochs`` in lockstep, calling ``on_round`` after each round.

    Args:
        recipe: the configuration, its caches (``pool`` and ``test``), budget, seed and precision.
        plan: the folds.
        folder: holds the fold files and the state; resumed from where its state says (empty: from scratch).
        on_round: called with (``summarise`` of the round, whether every fold has stopped, ``folder``).
        callbacks: extra Lightning callbacks for each fold-epoch's Trainer (e.g. a timer).
    """
    state = _read_state(folder, plan.folds)
    for epoch in range(state["epoch"], recipe.max_epochs):
        for k in range(plan.folds):
            if state["done"][k]:
                continue
            file = folder / FOLD_FILE.format(k=k)
            # ``balanced`` loss weights come from the labels of the whole pool (a fold's are nearly the same).
            system = recipe.system(seed=recipe.seed + 1000 * k + epoch)
            trainer = make_trainer(max_epochs=epoch + 1, precision=recipe.precision, callbacks=callbacks())
            trainer.fit(system, datamodule=fold_data(recipe, plan, k), ckpt_path=str(file) if file.is_file() else None)
            state["metrics"][k] = {key: float(value) for key, value in trainer.callback_metrics.items()}
            state["done"][k] = bool(trainer.should_stop)
            trainer.save_checkpoint(file)
        state["epoch"] = epoch + 1
        (folder / STATE_FILE).write_text(json.dumps(state))
        finished = all(state["done"])
        on_round(summarise(state["metrics"]), finished, folder)
        if finished:
            return
