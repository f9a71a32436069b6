"""Loss registries: ``SEG_LOSSES`` for lesion masks, ``CLS_LOSSES`` for image labels, ``ML_LOSSES``
for label sets (multi-label); ``LOSSES_BY_KIND`` maps a task's ``loss_kind`` to its registry.

Segmentation losses take (logits [B, 1, H, W], target float {0, 1} [B, 1, H, W]); classification
losses take (logits [B, K], target long [B]); multi-label losses take (logits [B, K], multi-hot
target float [B, K]). All return a scalar. Each entry is an ``nn.Module`` class whose keyword-only
``__init__`` arguments are what search spaces set (``loss.gamma: 2.0``).
Build one with ``medtune.names.build(SEG_LOSSES, "segmentation loss", "dice", smooth=1.0)``.

``BALANCED``: loss arguments a space may set to ``balanced`` (``loss.class_weights: balanced``,
``loss.pos_weight: balanced``); ``medtune.engine.build`` replaces the word by weights computed from the
training split's label sets with the function listed there.
"""

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def tversky_index(
    logits: torch.Tensor, target: torch.Tensor, *, alpha: float, beta: float, smooth: float
) -> torch.Tensor:
    """Soft Tversky index per image, [B], on sigmoid probabilities.

    Written as (2TP + s) / (2TP + 2 alpha FP + 2 beta FN + s): the usual TP / (TP + alpha FP +
    beta FN) with the smoothing halved, so that alpha = beta = 0.5 is exactly the soft Dice
    (2TP + s) / (sum p + sum t + s) with the same ``smooth``. An empty target predicted empty
    scores 1 thanks to the smoothing.
    """
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1).to(p.dtype)
    tp = (p * t).sum(1)
    fp = (p * (1 - t)).sum(1)
    fn = ((1 - p) * t).sum(1)
    return (2 * tp + smooth) / (2 * tp + 2 * alpha * fp + 2 * beta * fn + smooth)


class TverskyLoss(nn.Module):
    """1 - Tversky index, computed per image then averaged (Salehi et al. 2017).

    Args:
        alpha: weight of false positives.
        beta: weight of false negatives (raise it to favour recall on small lesions); None means
            ``1 - alpha``, the one-parameter family of the published loss grid.
        smooth: added to numerator and denominator; keeps empty masks defined.
    """

    def __init__(self, *, alpha: float = 0.5, beta: float | None = None, smooth: float = 1.0):
        super().__init__()
        self.alpha, self.beta, self.smooth = alpha, 1.0 - alpha if beta is None else beta, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        index = tversky_index(logits, target, alpha=self.alpha, beta=self.beta, smooth=self.smooth)
        return 1 - index.mean()


class DiceLoss(TverskyLoss):
    """1 - soft Dice on sigmoid probabilities, per image then averaged (Tversky with 0.5, 0.5).

    Args:
        smooth: added to numerator and denominator; empty target and prediction give loss 0.
    """

    def __init__(self, *, smooth: float = 1.0):
        super().__init__(alpha=0.5, beta=0.5, smooth=smooth)


class BCELoss(nn.Module):
    """Binary cross-entropy on logits, averaged over pixels.

    Args:
        pos_weight: weight of lesion pixels; above 1 counters the small lesion fraction.
    """

    def __init__(self, *, pos_weight: float = 1.0):
        super().__init__()
        self.register_buffer("pos_weight", torch.tensor(pos_weight), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=self.pos_weight)


class FocalLoss(nn.Module):
    """Sigmoid focal loss (Lin et al. 2017), averaged over pixels (or labels); as ``torchvision.ops``.

    Args:
        alpha: weight of lesion pixels, or of positive labels (the rest gets 1 - alpha); None (the default)
            weighs both 1. Not torchvision's 0.25: tuned for detection anchors, it down-weights the lesion
            pixels, which are already the rare class; the published segmentation loss grid uses no alpha.
        gamma: focusing exponent; 0 with ``alpha=None`` is plain BCE.
    """

    def __init__(self, *, alpha: float | None = None, gamma: float = 2.0):
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.to(logits.dtype)
        ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p = torch.sigmoid(logits)
        p_true = p * target + (1 - p) * (1 - target)
        loss = ce * (1 - p_true) ** self.gamma
        if self.alpha is not None:
            loss = loss * (self.alpha * target + (1 - self.alpha) * (1 - target))
        return loss.mean()


class BCEDiceLoss(nn.Module):
    """``bce_weight`` * BCE + (1 - ``bce_weight``) * Dice, both with their defaults.

    Args:
        bce_weight: share of BCE, in [0, 1].
    """

    def __init__(self, *, bce_weight: float = 0.5):
        super().__init__()
        self.bce_weight = bce_weight
        self.bce = BCELoss()
        self.dice = DiceLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce, dice = self.bce(logits, target), self.dice(logits, target)
        return self.bce_weight * bce + (1 - self.bce_weight) * dice


class CrossEntropyLoss(nn.Module):
    """Cross-entropy on logits.

    Args:
        label_smoothing: mass spread uniformly over the K classes, in [0, 1).
        class_weights: one weight per class (e.g. inverse frequency); None weighs all 1.
    """

    def __init__(self, *, label_smoothing: float = 0.0, class_weights: list[float] | None = None):
        super().__init__()
        self.label_smoothing = label_smoothing
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float)
        self.register_buffer("class_weights", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, weight=self.class_weights, label_smoothing=self.label_smoothing)


class FocalCrossEntropyLoss(nn.Module):
    """Multi-class focal loss: cross-entropy scaled by (1 - p_true) ** gamma.

    Averaged like weighted cross-entropy (divided by the summed weights of the targets), so
    ``gamma=0`` gives exactly ``CrossEntropyLoss`` with the same ``class_weights``.

    Args:
        gamma: focusing exponent; larger values down-weight well-classified images.
        class_weights: one weight per class; None weighs all 1.
    """

    def __init__(self, *, gamma: float = 2.0, class_weights: list[float] | None = None):
        super().__init__()
        self.gamma = gamma
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float)
        self.register_buffer("class_weights", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p_true = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
        loss = -log_p_true * (1 - log_p_true.exp()) ** self.gamma
        if self.class_weights is None:
            return loss.mean()
        weight = self.class_weights[target]
        return (weight * loss).sum() / weight.sum()


class MultiLabelBCELoss(nn.Module):
    """Binary cross-entropy of each label on logits [B, K] against multi-hot targets, averaged.

    Args:
        pos_weight: one weight per label for its positive images (``negatives / positives`` in the
            training split balances every label: ``loss.pos_weight: balanced``); None weighs all 1.
    """

    def __init__(self, *, pos_weight: list[float] | None = None):
        super().__init__()
        weight = None if pos_weight is None else torch.tensor(pos_weight, dtype=torch.float)
        self.register_buffer("pos_weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), pos_weight=self.pos_weight)


def _label_counts(labels: Sequence[torch.Tensor], num_classes: int) -> torch.Tensor:
    """Images carrying each class, from label sets (LongTensors of class indices, as in the cache)."""
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for label_set in labels:
        counts[label_set] += 1  # a set holds each class at most once
    return counts


def balanced_class_weights(labels: Sequence[torch.Tensor], num_classes: int) -> list[float]:
    """``n / (K * count_k)`` per class (scikit-learn's "balanced"), n = labels counted (images, if
    single-label); so the weighted mean over the training images is 1. A class with no image gets 1."""
    counts = _label_counts(labels, num_classes)
    return [float(counts.sum() / (num_classes * c)) if c > 0 else 1.0 for c in counts]


def balanced_pos_weight(labels: Sequence[torch.Tensor], num_classes: int) -> list[float]:
    """``negatives / positives`` per label over the training images; a label with no positive gets 1."""
    pos = _label_counts(labels, num_classes)
    return [float((len(labels) - p) / p) if p > 0 else 1.0 for p in pos]


BALANCED: dict[str, Callable[[Sequence[torch.Tensor], int], list[float]]] = {
    "class_weights": balanced_class_weights,
    "pos_weight": balanced_pos_weight,
}

SEG_LOSSES: dict[str, Callable[..., nn.Module]] = {
    "bce": BCELoss,
    "dice": DiceLoss,
    "focal": FocalLoss,
    "tversky": TverskyLoss,
    "bce_dice": BCEDiceLoss,
}

CLS_LOSSES: dict[str, Callable[..., nn.Module]] = {
    "ce": CrossEntropyLoss,
    "focal_ce": FocalCrossEntropyLoss,
}

ML_LOSSES: dict[str, Callable[..., nn.Module]] = {
    "bce": MultiLabelBCELoss,
    "focal": FocalLoss,  # elementwise, so it works on [B, K] label logits as on pixels
}

LOSSES_BY_KIND: dict[str, dict[str, Callable[..., nn.Module]]] = {
    "segmentation": SEG_LOSSES,
    "classification": CLS_LOSSES,
    "multilabel": ML_LOSSES,
}
