"""Contract tests: every task, optimizer and scheduler runs one training and one validation step."""
from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from src.build import build_datamodule, build_system
from src.data.cache import build_cache, load_cache
from src.data.coco import resolve_dataset
from src.optim import OPTIMIZERS, SCHEDULERS
from src.tasks import TASKS

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


@pytest.fixture(scope="module")
def caches(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("cache")
    dataset = resolve_dataset(synth_dir, cache_root=root)
    files = {s: str(build_cache(dataset, s, 32, root)) for s in ("train", "val", "test")}
    preds = {}
    for split, path in files.items():  # ground-truth masks stand in for a segmenter's output
        preds[split] = str(root / f"pred-{split}.pt")
        torch.save({"probs": load_cache(path)["masks"] * 255}, preds[split])
    return {"caches": files, "pred_masks": preds, "num_classes": dataset.num_classes}


def fit_one_step(task: str, config: dict, caches: dict) -> pl.Trainer:
    system = build_system(task, config, num_classes=caches["num_classes"], epochs=2)
    pred = caches["pred_masks"] if TASKS[task].needs_segmenter else None
    data = build_datamodule(config, caches=caches["caches"], pred_masks=pred)
    trainer = pl.Trainer(fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(system, datamodule=data)
    return trainer


def test_every_task_has_a_contract_config() -> None:
    assert set(TASK_CONFIGS) == set(TASKS)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_trains_and_validates(task: str, caches: dict) -> None:
    trainer = fit_one_step(task, {**BASE, **TASK_CONFIGS[task]}, caches)
    metrics = trainer.callback_metrics
    # One training step and one validation pass produced finite losses and the task's metrics.
    assert torch.isfinite(metrics["train/loss"]) and torch.isfinite(metrics["val/loss"])
    assert OBJECTIVES.get(task, "val/balanced_acc") in metrics


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_every_optimizer(optimizer: str, caches: dict) -> None:
    fit_one_step("segmentation", {**BASE, **TASK_CONFIGS["segmentation"], "train.optimizer": optimizer}, caches)


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_every_scheduler(scheduler: str, caches: dict) -> None:
    fit_one_step("segmentation", {**BASE, **TASK_CONFIGS["segmentation"], "train.scheduler": scheduler}, caches)


class NaNModel(torch.nn.Module):
    """Outputs NaN logits, as a diverged network would."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * float("nan")


def test_nan_loss_fails_with_a_message(caches: dict) -> None:
    config = {**BASE, **TASK_CONFIGS["segmentation"]}
    system = build_system("segmentation", config, num_classes=3, epochs=1)
    system.model = NaNModel()
    data = build_datamodule(config, caches=caches["caches"])
    trainer = pl.Trainer(fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    # The trial fails with a message saying what happened and when, instead of training on NaN.
    with pytest.raises(FloatingPointError, match="training loss became nan at epoch 0 batch 0"):
        trainer.fit(system, datamodule=data)
