"""Contract tests: every task, optimizer and scheduler runs one training and one validation step."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from medtune.build import build_datamodule, build_system
from medtune.optim import OPTIMIZERS, SCHEDULERS
from medtune.tasks import TASKS
from tests.helpers import BASE, OBJECTIVES, TASK_CONFIGS, fit_one_step


def test_every_task_has_a_contract_config() -> None:
    assert set(TASK_CONFIGS) == set(TASKS)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_trains_and_validates(task: str, task_caches: dict) -> None:
    trainer = fit_one_step(task, {**BASE, **TASK_CONFIGS[task]}, task_caches)
    metrics = trainer.callback_metrics
    # One training step and one validation pass produced finite losses and the task's metrics.
    assert torch.isfinite(metrics["train/loss"]) and torch.isfinite(metrics["val/loss"])
    assert OBJECTIVES.get(task, "val/balanced_acc") in metrics


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_every_optimizer(optimizer: str, task_caches: dict) -> None:
    fit_one_step("segmentation", {**BASE, **TASK_CONFIGS["segmentation"], "train.optimizer": optimizer}, task_caches)


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_every_scheduler(scheduler: str, task_caches: dict) -> None:
    fit_one_step("segmentation", {**BASE, **TASK_CONFIGS["segmentation"], "train.scheduler": scheduler}, task_caches)


class NaNModel(torch.nn.Module):
    """Outputs NaN logits, as a diverged network would."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * float("nan")


def test_nan_loss_fails_with_a_message(task_caches: dict) -> None:
    config = {**BASE, **TASK_CONFIGS["segmentation"]}
    system = build_system("segmentation", config, num_classes=3, epochs=1)
    system.model = NaNModel()
    data = build_datamodule(config, caches=task_caches["caches"])
    trainer = pl.Trainer(
        fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    # The trial fails with a message saying what happened and when, instead of training on NaN.
    with pytest.raises(FloatingPointError, match="training loss became nan at epoch 0 batch 0"):
        trainer.fit(system, datamodule=data)
