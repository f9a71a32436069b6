"""Train the search's winner again with more seeds, so its test score carries training variance.

The search trains each configuration once, with the launch's seed; how much the winner's test
score would move with another seed is then unknown. :func:`seed_predictions` retrains the winner's
``medtune.engine.recipe.Recipe`` with seeds ``seed + 1, seed + 2, ...`` on the same split, each for the full
``max_epochs`` (no ASHA, which only the search needs; the task's own patience still applies, as in a
trial), keeping the weights of its best validation epoch by the space's metric and mode: the
selection the search's checkpoint made. Every seed's test probabilities then feed the two-level
bootstrap of ``medtune.scoring.bootstrap``.

All R models are trained at the same budget. The search's winner counts as seed 0 only when it
ran its full budget (:func:`full_budget`: not stopped by ASHA); when ASHA stopped it at an early
rung it is left out and seed 0 is retrained from scratch too, so the interval is not about a mix
of a truncated model and full ones. The headline test number of a launch with R > 1 seeds is the
mean over them (:func:`headline`), the number the interval is about.

Plain Lightning in the driver process, after the search: no Ray.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytorch_lightning as pl
import torch

from medtune.engine.evaluate import test_predictions
from medtune.engine.recipe import Recipe
from medtune.engine.trainer import make_trainer
from medtune.scoring.bootstrap import SeedScore
from medtune.tasks.base import BaseTask


class BestWeights(pl.Callback):
    """Keeps in memory the weights of the epoch with the best ``metric`` (by ``mode``).

    Scored at ``on_train_epoch_end``, after the epoch's validation, from the same logged values
    the search's per-epoch checkpoint is ranked by (``trainables.trial.EpochReport``). The first
    epoch of equal best scores is kept; epochs with a missing or non-finite score never count.

    Args:
        metric: the logged validation metric, e.g. ``val/balanced_acc``.
        mode: ``max`` or ``min``.
    """

    def __init__(self, metric: str, mode: str) -> None:
        self.metric, self.sign = metric, 1.0 if mode == "max" else -1.0
        self.score: float | None = None
        self.epoch = -1
        self.state: dict[str, torch.Tensor] | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.metric)
        score = math.nan if value is None else float(value)
        if math.isfinite(score) and (self.score is None or self.sign * score > self.sign * self.score):
            self.score, self.epoch = score, trainer.current_epoch
            self.state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}

    def restore(self, system: pl.LightningModule) -> None:
        """Load the best epoch's weights into ``system``; refuses when no epoch had a finite score."""
        if self.state is None:
            raise RuntimeError(f"retrain: no epoch logged a finite {self.metric}; no weights to keep")
        system.load_state_dict(self.state)


def train(recipe: Recipe, *, callbacks: Sequence[pl.Callback] = ()) -> BaseTask:
    """Train ``recipe`` from scratch with ``recipe.seed`` for ``recipe.max_epochs``; the system holds the
    weights of its best epoch by ``recipe.metric`` and ``recipe.mode`` (``BestWeights``), in eval mode.

    ``callbacks``: extra Lightning callbacks for the Trainer (e.g. one that reads the initial weights).
    """
    system = recipe.system(seed=recipe.seed)
    data = recipe.datamodule()
    best = BestWeights(recipe.metric, recipe.mode)
    trainer = make_trainer(max_epochs=recipe.max_epochs, precision=recipe.precision, callbacks=[best, *callbacks])
    trainer.fit(system, datamodule=data)
    best.restore(system)
    return system.eval()


def seed_predictions(recipe: Recipe, first: np.ndarray | None, *, repeats: int) -> dict[str, np.ndarray]:
    """``probs_seeds`` [R, N, K] and ``seeds`` [R]: seed 0 is ``first``, or retrained when ``first`` is None.

    Args:
        recipe: how the search trained the winner; ``recipe.seed`` is the launch's, the retrains use
            ``seed + 1`` ... ``seed + repeats - 1`` (``dataclasses.replace``).
        first: the search's winner's test probabilities [N, K] (trained with ``recipe.seed``) when it
            ran the full budget; None when ASHA stopped it, so ``recipe.seed`` is retrained like the others.
        repeats: R, the number of seeds including the winner's.
    """
    seeds = [recipe.seed + r for r in range(repeats)]
    probs = [] if first is None else [first]
    for extra in seeds[len(probs) :]:
        system = train(replace(recipe, seed=extra))
        arrays = test_predictions(
            system, recipe.config, caches=recipe.caches, pred_masks=recipe.pred_masks, max_overlays=0
        )
        probs.append(arrays["probs"])
    return {"probs_seeds": np.stack(probs).astype(np.float32), "seeds": np.array(seeds)}


def full_budget(tags: dict[str, str]) -> bool:
    """Whether the winner's trial run (its MLflow tags) ran its full budget, as a retrain does.

    A trial that the task's own patience ended ran its budget (a retrain would stop there too); one
    that ASHA stopped (``stopped_early=true``) did not. Without the tag (a store that was away when
    the search ended) the trial counts as stopped: retraining costs a run, mixing budgets a wrong interval.
    """
    return tags.get("stopped_early") == "false"


def headline(test: dict[str, float], scores: dict[str, SeedScore] | None) -> dict[str, float]:
    """The launch's ``test/*`` numbers: with R > 1 seeds, ``test/<name>`` is the mean over the seeds.

    That mean is the point the two-level interval (``test_seeds/<name>_low``/``_high``) is about; a
    single seed's score can sit outside it. Metrics without a per-seed score (the loss, the saliency
    IoU) stay the search winner's, whose own ``test/*`` stay on its trial run.
    """
    means = {f"test/{name}": score.mean for name, score in (scores or {}).items() if score.seeds > 1}
    return {key: means.get(key, value) for key, value in test.items()}
