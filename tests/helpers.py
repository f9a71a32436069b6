"""Shared test helpers (no test module imports another): contract configurations and one-step fits."""

from __future__ import annotations

import pytorch_lightning as pl

from medtune.build import build_datamodule, build_system
from medtune.tasks import TASKS

BASE = {"data.image_size": 32, "data.batch_size": 4, "train.lr": 1e-3}
TASK_CONFIGS = {
    "segmentation": {"model.name": "unet", "model.width": 4, "model.depth": 2, "loss.name": "bce_dice"},
    "classification": {"model.name": "resnet18", "loss.name": "ce"},
    "masked_classification": {"model.name": "resnet18", "loss.name": "ce", "data.mask_mode": "soft"},
    "saliency_classification": {"model.name": "resnet18", "loss.name": "ce", "train.ce_weight": 0.5},
    "multilabel_classification": {"model.name": "resnet18", "loss.name": "bce", "data.sampler": "least_sampled_first"},
}
# The metric each task's spaces optimise; every other task reports val/balanced_acc.
OBJECTIVES = {"segmentation": "val/iou", "multilabel_classification": "val/challenge_score"}


def fit_one_step(task: str, config: dict, caches: dict) -> pl.Trainer:
    system = build_system(task, config, num_classes=caches["num_classes"], epochs=2)
    pred = caches["pred_masks"] if TASKS[task].needs_segmenter else None
    data = build_datamodule(config, caches=caches["caches"], pred_masks=pred)
    trainer = pl.Trainer(
        fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(system, datamodule=data)
    return trainer
