"""Classification metrics on per-image predictions, and a paired bootstrap over test images.

The metrics follow the torchmetrics definitions the trials log (``src/medtune/tasks/classification.py``):
accuracy (micro), balanced accuracy (mean recall over the classes present), macro F1 (over classes
that occur in the labels or the predictions) and macro one-vs-rest AUROC. Re-computing them here
from ``labels`` and ``probs`` lets every bootstrap resample be scored the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

RESAMPLES = 1000
SEED = 0
Metric = Callable[[np.ndarray, np.ndarray], float]


def accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(np.mean(probs.argmax(1) == labels))


def balanced_accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    pred = probs.argmax(1)
    return float(np.mean([np.mean(pred[labels == c] == c) for c in np.unique(labels)]))


def f1_macro(labels: np.ndarray, probs: np.ndarray) -> float:
    pred, scores = probs.argmax(1), []
    for c in range(probs.shape[1]):
        tp = np.sum((pred == c) & (labels == c))
        wrong = np.sum((pred == c) != (labels == c))  # false positives + false negatives
        if tp + wrong:
            scores.append(2 * tp / (2 * tp + wrong))
    return float(np.mean(scores)) if scores else float("nan")


def auroc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Macro one-vs-rest AUROC (Mann-Whitney form, ties counted half); NaN if no class has both kinds."""
    scores = []
    for c in range(probs.shape[1]):
        positive = labels == c
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        if n_pos and n_neg:
            ranks = rankdata(probs[:, c])
            scores.append((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(scores)) if scores else float("nan")


METRICS: dict[str, Metric] = {
    "acc": accuracy,
    "balanced_acc": balanced_accuracy,
    "f1_macro": f1_macro,
    "auroc": auroc,
}


@dataclass
class Interval:
    """A point estimate with a bootstrap percentile interval."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def _interval(value: float, samples: np.ndarray, level: float) -> Interval:
    finite = samples[np.isfinite(samples)]
    if not finite.size:
        return Interval(value, float("nan"), float("nan"))
    tail = 100 * (1 - level) / 2
    return Interval(value, float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail)))


def paired_bootstrap(
    labels: np.ndarray,
    probs: list[np.ndarray],
    metric: Metric,
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = 0.95,
) -> tuple[list[Interval], list[Interval]]:
    """Per-model intervals and intervals of the difference of each model against the first.

    Every resample draws the same test images (with replacement) for all models, so the
    difference's interval reflects only how the models disagree, not which images were drawn.
    Resamples where the metric is undefined (e.g. AUROC without a positive) are dropped.

    Args:
        labels: true class per test image [N].
        probs: per model, class probabilities [N,K] for the same images in the same order.
        metric: a function of (labels, probs), e.g. one of ``METRICS``.
        resamples: number of bootstrap resamples.
        seed: seed of the resampling.
        level: coverage of the intervals.
    """
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(labels), size=(resamples, len(labels)))
    samples = np.array([[metric(labels[idx], p[idx]) for p in probs] for idx in draws])  # [B, models]
    points = [metric(labels, p) for p in probs]
    values = [_interval(points[m], samples[:, m], level) for m in range(len(probs))]
    diffs = [_interval(points[m] - points[0], samples[:, m] - samples[:, 0], level) for m in range(len(probs))]
    return values, diffs
