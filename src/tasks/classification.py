"""Single-label image classification, on the whole image or on the segmenter-masked image.

Which image the network sees is decided by the data module (``data.mask_mode``); the system is the
same, so whole-image and masked classifiers are compared on equal terms.
"""
from __future__ import annotations

import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC, MulticlassCohenKappa, MulticlassF1Score

from src.tasks.base import BaseTask


class ClassificationTask(BaseTask):
    """Classification system; ``num_classes`` comes from the dataset, not the search space."""

    def __init__(self, model: nn.Module, loss: nn.Module, *, num_classes: int, **train_args) -> None:
        self.num_classes = num_classes
        super().__init__(model, loss, **train_args)

    def make_metrics(self, prefix: str) -> MetricCollection:
        k = self.num_classes
        return MetricCollection(
            {
                "acc": MulticlassAccuracy(k, average="micro"),
                "balanced_acc": MulticlassAccuracy(k, average="macro"),  # mean per-class recall
                "f1_macro": MulticlassF1Score(k, average="macro"),
                "auroc": MulticlassAUROC(k, average="macro"),
                "kappa": MulticlassCohenKappa(k),
            },
            prefix=prefix,
        )

    def step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(batch["image"])
        return self.loss(logits, batch["label"]), logits

    def update_metrics(self, stage: str, logits: torch.Tensor, batch: dict) -> None:
        self.metrics[stage].update(torch.softmax(logits, dim=1), batch["label"])
