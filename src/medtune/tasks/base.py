"""Shared Lightning plumbing: optimizer/scheduler set-up, finite-loss guard, metric logging, and the
contract every task answers for the platform (what it saves as test predictions, how the report
draws them, which constructor arguments the platform provides), so no caller tests task types.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping
from torch import nn
from torchmetrics import MetricCollection

from medtune import optim
from medtune.data.datasets import IMAGENET_MEAN, IMAGENET_STD


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the trial fails with this message."""


def seen_images(images: torch.Tensor) -> torch.Tensor:
    """Normalised test images [B, 3, S, S] back to uint8: exactly what the network saw.

    The test transform is ``ToDtype(scale=True)`` then ``Normalize`` (no augmentation), so this
    undoes it to the cached pixels, or to the masked/cropped view in masked classification.
    """
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return ((images * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)


class BaseTask(pl.LightningModule):
    """A system that receives its network and loss and owns optimizer, scheduler and metrics.

    Class attributes each task sets (the platform asks them instead of testing the task's type):

    * ``report_kind``: ``segmentation``, ``classification`` or ``multilabel``; saved in
      ``test_predictions.npz`` so the report knows how to draw the arrays of ``predictions``;
    * ``platform_args``: the constructor arguments the platform provides (``max_epochs``,
      ``num_classes``, ``cam_layer``, ...; see ``medtune.engine.build.platform_args``), never searched;
    * ``activation``: ``softmax`` or ``sigmoid``, what turns the network's logits into the
      probabilities its metrics and predictions use (``medtune.engine.ensemble`` averages those).

    Args:
        model: the network (from a model registry).
        loss: the loss module (from a loss registry).
        optimizer: ``adam``, ``adamw`` or ``sgd``.
        lr: peak learning rate.
        weight_decay: decoupled (adamw) or L2 (adam, sgd) weight decay.
        momentum: SGD momentum (ignored by adam/adamw).
        scheduler: a name from ``medtune.optim.SCHEDULERS``.
        max_epochs: the epoch budget the scheduler spans.
        patience: stop after this many epochs without a lower ``val/loss`` (0: never). The trial
            then ends before ``max_epochs`` and is recorded as ``early_stopped``, not as stopped by ASHA.
    """

    report_kind: ClassVar[str] = ""
    platform_args: ClassVar[tuple[str, ...]] = ("max_epochs",)
    activation: ClassVar[str] = ""

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
        max_epochs: int = 10,
        patience: int = 0,
    ) -> None:
        super().__init__()
        self.model, self.loss = model, loss
        self.optimizer, self.lr, self.weight_decay, self.momentum = optimizer, lr, weight_decay, momentum
        self.scheduler, self.max_epochs, self.patience = scheduler, max_epochs, patience
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

    @property
    def has_cam(self) -> bool:
        """Whether ``predictions`` carries saliency maps (``cams``) to draw as overlays."""
        return False

    def predict_batch(self, batch: dict, *, overlays: int) -> dict[str, torch.Tensor]:
        """Per-image prediction arrays of one batch (first dimension: images).

        Args:
            batch: a test batch (``image``, ``mask``, ``label``, ...).
            overlays: how many of its first images also get the arrays for figures (``images``,
                ``masks``, ...); those keys are left out when 0.
        """
        raise NotImplementedError

    @torch.no_grad()
    def predictions(self, batches: Iterable[dict], *, max_overlays: int = 16) -> dict[str, np.ndarray]:
        """The arrays saved as ``test_predictions.npz``: ``predict_batch`` over ``batches``, joined.

        Figure arrays cover the first ``max_overlays`` images; ``report_kind`` is added as a
        0-d string array, so the report reads how to draw the file instead of guessing.
        """
        self.eval()
        parts: dict[str, list[torch.Tensor]] = {}
        seen = 0
        for batch in batches:
            batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            size = batch["image"].shape[0]
            for key, value in self.predict_batch(batch, overlays=min(size, max(0, max_overlays - seen))).items():
                parts.setdefault(key, []).append(value.detach().cpu())
            seen += size
        arrays = {key: torch.cat(values).numpy() for key, values in parts.items()}
        return {**arrays, "report_kind": np.array(self.report_kind)}

    def configure_callbacks(self) -> list[pl.Callback]:
        if self.patience <= 0:
            return []
        # Decided at validation end, before on_train_epoch_end, so the epoch's report knows it stopped.
        return [EarlyStopping(monitor="val/loss", mode="min", patience=self.patience, check_on_train_epoch_end=False)]

    def configure_optimizers(self) -> dict:
        steps = self.trainer.estimated_stepping_batches // max(1, self.trainer.max_epochs or 1)
        return optim.configure(
            [p for p in self.parameters() if p.requires_grad],
            optimizer=self.optimizer,
            lr=self.lr,
            weight_decay=self.weight_decay,
            momentum=self.momentum,
            scheduler=self.scheduler,
            epochs=self.max_epochs,
            steps_per_epoch=int(steps),
        )
