"""Evaluate a trained trial on the held-out test split, in the driver, after the search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from medtune.data.cache import CacheSource, load_cache
from medtune.engine.build import build_datamodule, build_system
from medtune.engine.trainer import make_trainer
from medtune.tasks.base import BaseTask


def load_system(
    task: str,
    config: dict,
    checkpoint_file: Path,
    *,
    num_classes: int,
    max_epochs: int,
    train_cache: CacheSource | None = None,
) -> BaseTask:
    """Rebuild the system from its config and load weights, refusing arbitrary pickles.

    ``train_cache`` (the training split's cache) is needed when a loss weight is ``balanced``.
    """
    system = build_system(task, config, num_classes=num_classes, max_epochs=max_epochs, train_cache=train_cache)
    try:
        state = torch.load(checkpoint_file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means: do not trust this file
        raise RuntimeError(
            f"{checkpoint_file}: refused to load checkpoint ({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from None
    system.load_state_dict(state["state_dict"])
    return system.eval()


def test_metrics(
    system: BaseTask, config: dict, *, caches: dict[str, str], pred_masks: dict[str, str] | None = None
) -> dict[str, float]:
    """Run the test split once and return its ``test/*`` metrics."""
    data = build_datamodule(
        config, caches=caches, pred_masks=pred_masks, num_classes=getattr(system, "num_classes", None)
    )
    trainer = make_trainer()
    results = trainer.test(system, datamodule=data, verbose=False)
    return {k: float(v) for k, v in results[0].items()}


def test_predictions(
    system: BaseTask,
    config: dict,
    *,
    caches: dict[str, str],
    pred_masks: dict[str, str] | None = None,
    max_overlays: int = 16,
) -> dict[str, np.ndarray]:
    """Per-image test predictions, saved as ``test_predictions.npz`` for reports and comparisons.

    ``image_ids`` (from the test cache) plus what the task answers (``BaseTask.predictions``: the
    arrays of its ``predict_batch``, figure arrays for the first ``max_overlays`` images, and its
    ``report_kind``), over the test split exactly as the network sees it (masked or cropped).
    """
    data = build_datamodule(
        config, caches=caches, pred_masks=pred_masks, num_classes=getattr(system, "num_classes", None)
    )
    loader = DataLoader(data.dataset("test"), batch_size=data.batch_size)
    image_ids = load_cache(caches["test"])["image_ids"].numpy()
    return {"image_ids": image_ids, **system.predictions(loader, max_overlays=max_overlays)}
