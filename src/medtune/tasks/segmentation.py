"""Binary lesion segmentation: the network outputs one logit per pixel.

Pixel metrics (``iou``, ``dice``, ``precision``, ``recall``, ``specificity``, ``pixel_acc``) are
computed over all pixels of the split. Per-image metrics: ``image_iou`` (mean IoU per image) and
``fail_rate``, the share of images with IoU below 0.65 (a standard failure count for lesion
segmentation). Images without a lesion: IoU is 1 when the prediction is empty too, else 0, so a
segmenter that hallucinates lesions on normal images is counted as failing there (the one IoU
rule of ``medtune.metrics.per_image_iou``, shared with the saved test predictions).

Test predictions (``predict_batch``): ``iou`` [N] per image (the same values ``image_iou`` averages)
and, for the first images, ``images`` uint8 [M,3,S,S], ``masks`` uint8 [M,1,S,S], ``probs`` float16
[M,1,S,S].
"""

from __future__ import annotations

import torch
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryF1Score,
    BinaryJaccardIndex,
    BinaryPrecision,
    BinaryRecall,
    BinarySpecificity,
)

from medtune.metrics import per_image_iou
from medtune.tasks.base import BaseTask, seen_images

FAIL_IOU = 0.65  # below this a lesion segmentation counts as failed


class SegmentationTask(BaseTask):
    """Segmentation system; ``threshold`` turns probabilities into the reported masks.

    Args:
        threshold: probability above which a pixel is lesion (for metrics, not the loss).
        **train_args: see ``BaseTask``.
    """

    report_kind = "segmentation"
    activation = "sigmoid"

    def __init__(self, model, loss, *, threshold: float = 0.5, **train_args) -> None:
        self.threshold = threshold
        super().__init__(model, loss, **train_args)

    def make_metrics(self, prefix: str) -> MetricCollection:
        t = self.threshold
        return MetricCollection(
            {
                "iou": BinaryJaccardIndex(threshold=t),
                "dice": BinaryF1Score(threshold=t),
                "precision": BinaryPrecision(threshold=t),
                "recall": BinaryRecall(threshold=t),
                "specificity": BinarySpecificity(threshold=t),
                "pixel_acc": BinaryAccuracy(threshold=t),
                "image_iou": MeanMetric(),
                "fail_rate": MeanMetric(),
            },
            prefix=prefix,
            compute_groups=False,
        )

    def step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(batch["image"])
        return self.loss(logits, batch["mask"]), logits

    def update_metrics(self, stage: str, logits: torch.Tensor, batch: dict) -> None:
        probs, target = torch.sigmoid(logits), batch["mask"].long()
        metrics = self.metrics[stage]
        for name in ("iou", "dice", "precision", "recall", "specificity", "pixel_acc"):
            metrics[name].update(probs, target)
        ious = per_image_iou(probs >= self.threshold, target > 0)
        metrics["image_iou"].update(ious)
        metrics["fail_rate"].update((ious < FAIL_IOU).float())

    def predict_batch(self, batch: dict, *, overlays: int) -> dict[str, torch.Tensor]:
        """``iou`` per image (the rule of ``image_iou``); images, masks and probabilities for figures."""
        probs, target = torch.sigmoid(self.model(batch["image"])), batch["mask"] > 0
        out = {"iou": per_image_iou(probs >= self.threshold, target)}
        if overlays:
            out["images"] = seen_images(batch["image"][:overlays])
            out["masks"] = target[:overlays].to(torch.uint8)
            out["probs"] = probs[:overlays].half()
        return out
