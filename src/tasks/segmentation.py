"""Binary lesion segmentation: the network outputs one logit per pixel."""
from __future__ import annotations

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryF1Score, BinaryJaccardIndex, BinaryPrecision, BinaryRecall

from src.tasks.base import BaseTask


class SegmentationTask(BaseTask):
    """Segmentation system; metrics are pixel-level over the whole split (``iou``, ``dice``, ...)."""

    def make_metrics(self, prefix: str) -> MetricCollection:
        return MetricCollection(
            {"iou": BinaryJaccardIndex(), "dice": BinaryF1Score(), "precision": BinaryPrecision(), "recall": BinaryRecall()},
            prefix=prefix,
        )

    def step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(batch["image"])
        return self.loss(logits, batch["mask"]), logits

    def update_metrics(self, stage: str, logits: torch.Tensor, batch: dict) -> None:
        self.metrics[stage].update(torch.sigmoid(logits), batch["mask"].long())
