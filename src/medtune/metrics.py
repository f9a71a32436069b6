"""The per-image IoU, defined once: the segmentation metric, the saved test predictions and the
saliency IoU all call ``per_image_iou``, so the logged ``test/image_iou`` and the report agree.

Empty-mask rule: when prediction and target are both empty the IoU is 1.0; when only one of them is
empty it is 0.0. A lesion-free image (e.g. BUSI "normal") is then scored on what matters there: a
segmenter that predicts nothing is right (1.0), one that hallucinates a lesion is wrong (0.0). This
is why the segmentation metric ``image_iou`` (and ``fail_rate``) counts such images at all.

The saliency IoU (``medtune.saliency.hard_iou``) uses this function too, but a CAM is min-max
scaled and explains a class, not a lesion, so on a lesion-free image its value says nothing; that
function also returns ``valid`` (target non-empty) and saliency averages skip invalid images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the metric names' rules are read by processes that never load torch
    from torch import Tensor

# Logged metrics where lower is better, by the last part of their name (``val/loss``, ``cv/fold0/val/fail_rate``);
# every other metric counts as higher-better. Spaces check their ``mode`` against it, reports compare with it.
LOWER_IS_BETTER = frozenset({"loss", "fail_rate"})


def lower_is_better(name: str) -> bool:
    """Whether a smaller value of the metric ``name`` is better (see ``LOWER_IS_BETTER``)."""
    return name.split("/")[-1] in LOWER_IS_BETTER


def per_image_iou(pred: Tensor, target: Tensor) -> Tensor:
    """IoU per image of boolean masks ``[B, ...]``: 1.0 when both are empty (see the module docstring).

    Args:
        pred: predicted masks, bool, any shape with the batch first (``[B, 1, H, W]``, ``[B, H, W]``).
        target: ground-truth masks, bool, the same shape.

    Returns:
        float ``[B]`` in ``[0, 1]``.
    """
    inter = (pred & target).flatten(1).sum(1).float()
    union = (pred | target).flatten(1).sum(1).float()
    return (inter / union.clamp(min=1)).where(union > 0, 1.0)
