"""Saliency-guided classification: teach the classifier to look at the lesion (CEntIoU).

The loss of a batch is ``ce_weight * loss(logits, y) + (1 - ce_weight) * (1 - mean soft IoU)``,
the CEntIoU loss of ``medtune.saliency``, with two choices made here:

* the CE term is the configured ``loss.*`` (plain, class-weighted or focal cross-entropy), so the
  saliency task combines with every classification loss; with ``loss.name: ce`` it equals
  ``CEntIoULoss(ce_weight=w)`` value for value;
* the CAM is HiResCAM of the *true* class at the backbone's CAM layer, computed with
  ``create_graph=True`` in training, so the soft-IoU term backpropagates into the backbone. One
  forward per step: the CE term uses the logits ``hirescam`` returns.

The mean soft IoU goes over images with a lesion; a batch without any contributes 0 (see the
empty-mask convention in ``medtune.saliency``). Validation and test report the same objective as
``val/loss`` (with CAMs taken without a graph) and ``saliency_iou`` like every classifier.

Cost (``benchmarks/saliency_step.py``, BENCHMARKS.md 2b): a training step took 0.98x a whole-image
step on resnet18 (64 px, batch 16, CPU, 1 thread; CAM layer ``layer4``, so the double backward only
re-crosses pooling and head), 1.06x on mobilenet_v3_small.
"""

from __future__ import annotations

from torch import Tensor, nn

from medtune.saliency import soft_iou, valid_mean
from medtune.tasks.classification import ClassificationTask


class SaliencyClassificationTask(ClassificationTask):
    """Classifier trained with CE plus a soft-IoU term between its HiResCAM and the lesion mask.

    Args:
        model: the classifier (``CLS_MODELS``).
        loss: the CE flavour (``CLS_LOSSES``), weighted by ``ce_weight``.
        ce_weight: weight of the CE term in ``[0, 1]``; 1.0 is plain CE (but still pays for CAMs).
        **kwargs: ``ClassificationTask`` arguments (``num_classes``, ``cam_layer``, ...). The
            saliency metric is always on: validation needs the CAMs for its loss anyway.
    """

    def __init__(self, model: nn.Module, loss: nn.Module, *, ce_weight: float = 0.5, **kwargs) -> None:
        if not 0.0 <= ce_weight <= 1.0:
            raise ValueError(f"ce_weight must be in [0, 1], got {ce_weight}")
        super().__init__(model, loss, saliency_metric=True, **kwargs)
        self.ce_weight = ce_weight

    def objective(self, logits: Tensor, batch: dict, cams: Tensor | None) -> Tensor:
        """``ce_weight * loss + (1 - ce_weight) * mean(1 - soft IoU)`` over images with a lesion."""
        iou, valid = soft_iou(cams, batch["mask"])
        return self.ce_weight * self.loss(logits, batch["label"]) + (1.0 - self.ce_weight) * valid_mean(
            1.0 - iou, valid
        )

    def step(self, batch: dict) -> tuple[Tensor, Tensor]:
        logits, cams = self.cam(batch["image"], batch["label"], create_graph=True)
        return self.objective(logits, batch, cams), logits
