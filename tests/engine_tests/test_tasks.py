"""Contract tests: every task, optimizer and scheduler runs one training and one validation step."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from medtune.engine.build import build_datamodule, build_system
from medtune.optim import OPTIMIZERS, SCHEDULERS
from medtune.tasks import TASKS
from tests.helpers import BASE, OBJECTIVES, TASK_CONFIGS, build_one, fit_one_step


def test_every_task_has_a_contract_config() -> None:
    assert set(TASK_CONFIGS) == set(TASKS)


@pytest.mark.e2e
@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_trains_and_validates(task: str, task_caches: dict) -> None:
    trainer = fit_one_step(task, {**BASE, **TASK_CONFIGS[task]}, task_caches)
    metrics = trainer.callback_metrics
    # One training step and one validation pass produced finite losses and the task's metrics.
    assert torch.isfinite(metrics["train/loss"]) and torch.isfinite(metrics["val/loss"])
    assert OBJECTIVES.get(task, "val/balanced_acc") in metrics


# The class each optimizer name builds; a new registry entry must be added here to be tested.
OPTIMIZER_CLASSES = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
LR = BASE["train.lr"]
# The learning rate at the start of each of 4 steps (2 epochs of 2 batches; the system's budget is 2 epochs).
SCHEDULES = {
    "constant": [LR, LR, LR, LR],
    "cosine": [LR, LR, LR / 2, LR / 2],  # per epoch: half-way through a cosine of 2 epochs, half the rate
    "linear": [LR, LR, 0.525 * LR, 0.525 * LR],  # per epoch: factor 1 -> 0.05 over 2 epochs
    "cyclic": [LR / 10, LR, LR / 10, 0.55 * LR],  # per step: half-cycle 1 step; triangular2 halves the 2nd peak
    "plateau": [LR, LR, LR, LR],  # halves only after 2 epochs without a better val/loss
}
SCHEDULER_CLASSES = {
    "constant": type(None),
    "cosine": torch.optim.lr_scheduler.CosineAnnealingLR,
    "linear": torch.optim.lr_scheduler.LinearLR,
    "onecycle": torch.optim.lr_scheduler.OneCycleLR,
    "cyclic": torch.optim.lr_scheduler.CyclicLR,
    "plateau": torch.optim.lr_scheduler.ReduceLROnPlateau,
}


def test_every_optimizer_and_scheduler_has_an_expectation() -> None:
    assert set(OPTIMIZER_CLASSES) == set(OPTIMIZERS) and set(SCHEDULER_CLASSES) == set(SCHEDULERS)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_every_optimizer(optimizer: str, task_caches: dict) -> None:
    config = {**BASE, **TASK_CONFIGS["segmentation"], "train.optimizer": optimizer}
    system, data = build_one("segmentation", config, task_caches)
    before = [p.detach().clone() for p in system.parameters()]
    trainer = pl.Trainer(
        fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(system, datamodule=data)
    # The named optimizer class (exactly: AdamW is no Adam here) took a step that moved every parameter tensor.
    assert type(trainer.optimizers[0]) is OPTIMIZER_CLASSES[optimizer]
    assert all(not torch.equal(a, b) for a, b in zip(before, system.parameters()))


class RecordLR(pl.Callback):
    """The optimizer's learning rate at the start of every training step."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.e2e
@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_every_scheduler(scheduler: str, task_caches: dict) -> None:
    config = {**BASE, **TASK_CONFIGS["segmentation"], "train.scheduler": scheduler}
    system, data = build_one("segmentation", config, task_caches, epochs=2)
    record = RecordLR()
    trainer = pl.Trainer(
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record],
    )
    trainer.fit(system, datamodule=data)
    configs = trainer.lr_scheduler_configs
    # The named scheduler class drives the optimizer (none for constant) ...
    assert type(configs[0].scheduler if configs else None) is SCHEDULER_CLASSES[scheduler]
    if scheduler == "onecycle":
        # ... one cycle of 4 steps: warm-up from lr/25 (OneCycleLR's div_factor) towards lr, then anneal.
        assert record.lrs[0] == pytest.approx(LR / 25) and record.lrs[0] < record.lrs[1] <= LR
        assert record.lrs[3] < record.lrs[1]
    else:
        # ... and the learning rate followed its schedule, step by step.
        assert record.lrs == pytest.approx(SCHEDULES[scheduler])


class NaNModel(torch.nn.Module):
    """Outputs NaN logits, as a diverged network would."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * float("nan")


def test_nan_loss_fails_with_a_message(task_caches: dict) -> None:
    config = {**BASE, **TASK_CONFIGS["segmentation"]}
    system = build_system("segmentation", config, num_classes=3, max_epochs=1)
    system.model = NaNModel()
    data = build_datamodule(config, caches=task_caches["caches"])
    trainer = pl.Trainer(
        fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    # The trial fails with a message saying what happened and when, instead of training on NaN.
    with pytest.raises(FloatingPointError, match="training loss became nan at epoch 0 batch 0"):
        trainer.fit(system, datamodule=data)
