"""Shared Lightning plumbing: optimizer/scheduler set-up, finite-loss guard, metric logging."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping
from torch import nn
from torchmetrics import MetricCollection

from medtune import optim


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the trial fails with this message."""


class BaseTask(pl.LightningModule):
    """A system that receives its network and loss and owns optimizer, scheduler and metrics.

    Args:
        model: the network (from a model registry).
        loss: the loss module (from a loss registry).
        optimizer: ``adam``, ``adamw`` or ``sgd``.
        lr: peak learning rate.
        weight_decay: decoupled (adamw) or L2 (adam, sgd) weight decay.
        momentum: SGD momentum (ignored by adam/adamw).
        scheduler: a name from ``medtune.optim.SCHEDULERS``.
        epochs: the epoch budget the scheduler spans.
        patience: stop after this many epochs without a lower ``val/loss`` (0: never). The trial
            then ends before ``epochs`` and is recorded as ``early_stopped``, not as stopped by ASHA.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        *,
        optimizer: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        scheduler: str = "cosine",
        epochs: int = 10,
        patience: int = 0,
    ) -> None:
        super().__init__()
        self.model, self.loss = model, loss
        self.optimizer, self.lr, self.weight_decay, self.momentum = optimizer, lr, weight_decay, momentum
        self.scheduler, self.epochs, self.patience = scheduler, epochs, patience
        self.metrics = nn.ModuleDict({"val": self.make_metrics("val/"), "test": self.make_metrics("test/")})

    def make_metrics(self, prefix: str) -> MetricCollection:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (loss, logits) for a batch; subclasses define the target."""
        raise NotImplementedError

    def update_metrics(self, stage: str, logits: torch.Tensor, batch: dict) -> None:
        raise NotImplementedError

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, _ = self.step(batch)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss became {loss.item()} at epoch {self.current_epoch} batch {batch_idx}"
            )
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=batch["image"].shape[0])
        return loss

    def _eval_step(self, stage: str, batch: dict) -> None:
        loss, logits = self.step(batch)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=batch["image"].shape[0])
        self.update_metrics(stage, logits, batch)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.metrics["val"].compute())
        self.metrics["val"].reset()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.metrics["test"].compute())
        self.metrics["test"].reset()

    def configure_callbacks(self) -> list[pl.Callback]:
        if self.patience <= 0:
            return []
        return [EarlyStopping(monitor="val/loss", mode="min", patience=self.patience)]

    def configure_optimizers(self) -> dict:
        steps = self.trainer.estimated_stepping_batches // max(1, self.trainer.max_epochs or 1)
        return optim.configure(
            [p for p in self.parameters() if p.requires_grad],
            optimizer=self.optimizer,
            lr=self.lr,
            weight_decay=self.weight_decay,
            momentum=self.momentum,
            scheduler=self.scheduler,
            epochs=self.epochs,
            steps_per_epoch=int(steps),
        )
