"""One training recipe: everything a training of one configuration is built from, in one frozen dataclass.

A trial (``trainables.trial``), a cross-validation round (``medtune.engine.crossval``), a retrain with
another seed (``medtune.engine.repeats``) and publishing (``medtune.publish``) all build their system
and data module from a :class:`Recipe`, so what the search trained and what is published, retrained
or loaded back cannot drift apart. A variant is derived with ``dataclasses.replace`` (another
configuration, another seed, a trial's opened caches), never by copying fields by hand.

Its ``caches`` decide the training split: ``pool`` (train+val rows in a ``FoldPlan``'s order) under
cross-validation, where the folds pick the rows, else ``train``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl

from medtune.data.cache import CacheSource
from medtune.data.datasets import CachedDataModule
from medtune.engine.build import build_datamodule, build_system
from medtune.engine.evaluate import load_system
from medtune.tasks.base import BaseTask

POOL = "pool"  # the cache of a cross-validated launch's train+val rows (``medtune.data.folds.pool_cache``)


@dataclass(frozen=True)
class Recipe:
    """How one configuration is trained: task, configuration, data, epoch budget, selection, seed, precision.

    Args:
        task: the space's task (``medtune.tasks.TASKS``).
        config: the flat configuration (dotted keys); empty in the launch-wide recipe a trial derives its own from.
        caches: split -> cache at the configuration's image size: files, or (in a trial) the caches the
            driver handed over through Ray, already open (``medtune.data.shared``). ``pool`` and ``test``
            under cross-validation, else ``train``, ``val`` and ``test``.
        pred_masks: the same splits' segmenter probabilities (masked tasks), else None.
        num_classes: classes in the dataset.
        max_epochs: the epoch budget (the space's ``budget.max_epochs``), which the LR schedule spans.
        metric: the space's objective, e.g. ``val/balanced_acc`` (checkpoint selection; "" in a launch
            whose trials write a checkpoint every epoch).
        mode: ``max`` or ``min``.
        seed: the launch's ``--seed``.
        precision: Lightning precision on a GPU (``--precision``); the CPU always runs ``32-true``.
    """

    task: str
    config: dict
    caches: dict[str, CacheSource]
    pred_masks: dict[str, CacheSource] | None
    num_classes: int
    max_epochs: int
    metric: str = ""
    mode: str = "max"
    seed: int = 0
    precision: str = "32-true"

    @property
    def train_split(self) -> str:
        """The split whose labels weigh a ``balanced`` loss: ``pool`` under cross-validation, else ``train``."""
        return POOL if POOL in self.caches else "train"

    def system(self, seed: int | None = None) -> BaseTask:
        """The untrained Lightning system; ``seed`` seeds every generator first (the initial weights)."""
        if seed is not None:
            pl.seed_everything(seed, workers=True, verbose=False)
        return build_system(
            self.task,
            self.config,
            num_classes=self.num_classes,
            max_epochs=self.max_epochs,
            train_cache=self.caches.get(self.train_split),
        )

    def datamodule(
        self, *, splits: dict[str, str] | None = None, subsets: dict[str, list[int]] | None = None
    ) -> CachedDataModule:
        """The data module over the recipe's caches.

        Args:
            splits: the data module's split -> the recipe's cache it reads, where the names differ (a
                fold trains and validates on rows of ``pool``) [each split its own cache].
            subsets: split -> rows of its cache (a cross-validation fold).
        """
        caches, masks = self.caches, self.pred_masks
        if splits:
            caches = {split: self.caches[name] for split, name in splits.items()}
            masks = {split: self.pred_masks[name] for split, name in splits.items()} if self.pred_masks else None
        return build_datamodule(
            self.config, caches=caches, pred_masks=masks, num_classes=self.num_classes, subsets=subsets
        )

    def load(self, checkpoint_file: Path) -> BaseTask:
        """The system with the weights of ``checkpoint_file`` (a trial's or a fold's), in eval mode."""
        return load_system(
            self.task,
            self.config,
            checkpoint_file,
            num_classes=self.num_classes,
            max_epochs=self.max_epochs,
            train_cache=self.caches.get(self.train_split),
        )
