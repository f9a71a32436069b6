"""Contract tests of the one training recipe (``medtune.engine.recipe.Recipe``).

Every task's recipe builds its system and data module; and the three paths that train from a recipe
(a trial, a cross-validation round, a retrain with another seed) start from the same system, so what
the search trained, what is retrained and what is published are one configuration.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from medtune.data.cache import build_cache
from medtune.data.coco import resolve_dataset
from medtune.data.folds import plan_folds, pool_cache
from medtune.engine import repeats
from medtune.engine.crossval import train_folds
from medtune.engine.recipe import Recipe
from medtune.tasks import TASKS
from tests.helpers import BASE, OBJECTIVES, TASK_CONFIGS
from trainables.trial import EpochReport, TrialContext, run_trial


def _recipe(task: str, task_caches: dict, **changes: object) -> Recipe:
    recipe = Recipe(
        task=task,
        config={**BASE, **TASK_CONFIGS[task]},
        caches=task_caches["caches"],
        pred_masks=task_caches["pred_masks"] if TASKS[task].needs_segmenter else None,
        num_classes=task_caches["num_classes"],
        max_epochs=3,
        metric=OBJECTIVES.get(task, "val/balanced_acc"),
        mode="max",
        seed=7,
    )
    return dataclasses.replace(recipe, **changes)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_recipe_builds_its_system_and_datamodule(task: str, task_caches: dict) -> None:
    recipe = _recipe(task, task_caches)
    system = recipe.system(seed=recipe.seed)
    initial = {k: v.clone() for k, v in system.state_dict().items()}  # a training step moves batch-norm statistics
    data = recipe.datamodule()
    batch = next(iter(data.train_dataloader()))
    loss, _ = system.step(batch)
    # The task's own system, its LR schedule spanning the recipe's epoch budget, trainable on the recipe's data.
    assert type(system) is TASKS[task].system and system.max_epochs == recipe.max_epochs == 3
    assert torch.isfinite(loss) and batch["image"].shape[0] == BASE["data.batch_size"]
    # The seed decides the initial weights: the same seed builds the same system, another seed another.
    assert _same(initial, recipe.system(seed=recipe.seed).state_dict())
    assert not _same(initial, recipe.system(seed=recipe.seed + 1).state_dict())


class _Initial(pl.Callback):
    """Keeps the weights a fit starts from (its first fit only)."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.state is None:
            self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


class _TrialInitial(EpochReport):
    """A trial's report outside Ray Tune: keeps the weights the trial starts from instead of reporting."""

    def __init__(self) -> None:
        super().__init__(checkpoints=False)
        self.initial = _Initial()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.initial.on_fit_start(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass


@pytest.mark.e2e
@pytest.mark.filterwarnings("ignore:`get_checkpoint` is meant")  # run_trial outside Tune: no checkpoint to resume
def test_trial_cv_round_and_retrain_start_from_one_system(synth_dir: Path, task_caches: dict, tmp_path: Path) -> None:
    recipe = _recipe("segmentation", task_caches, max_epochs=1)
    threads = torch.get_num_threads()  # run_trial sets the trial's own
    try:
        # The trial path: the launch-wide recipe (no configuration, no caches) in the context, derived per trial.
        launch = dataclasses.replace(recipe, config={}, caches={}, pred_masks=None)
        context = TrialContext(recipe=launch, caches={32: task_caches["caches"]}, pred_masks=None, threads=1)
        assert context.recipe_for(recipe.config) == recipe  # what publishing rebuilds the winner from
        report = _TrialInitial()
        run_trial(dict(recipe.config), context, report=report)
    finally:
        torch.set_num_threads(threads)

    # The retrain path (medtune.engine.repeats), on the same splits.
    retrain = _Initial()
    repeats.train(recipe, callbacks=[retrain])

    # The cross-validation path: the same recipe over the pool of train+val (fold 0's first round).
    root = tmp_path / "cache"
    dataset = resolve_dataset(synth_dir, cache_root=root)
    plan = plan_folds(dataset, 2, seed=0, cache_root=root)
    pool = {"pool": str(pool_cache(dataset, 32, root)), "test": str(build_cache(dataset, "test", 32, root))}
    fold = _Initial()
    train_folds(dataclasses.replace(recipe, caches=pool), plan, tmp_path, lambda *_: None, callbacks=lambda: [fold])

    # One recipe, one seed: the three paths build and start from the same weights ...
    assert report.initial.state is not None and retrain.state is not None and fold.state is not None
    assert _same(report.initial.state, retrain.state) and _same(report.initial.state, fold.state)
    # ... which the seed decides (another seed starts elsewhere: the comparison can fail).
    assert not _same(report.initial.state, recipe.system(seed=recipe.seed + 1).state_dict())
