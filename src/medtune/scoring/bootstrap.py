"""Classification metrics on per-image predictions, and a two-level bootstrap over test images and seeds.

The metrics follow the torchmetrics definitions the trials log (``src/medtune/tasks/classification.py``):
accuracy (micro), balanced accuracy (mean recall over the classes present), macro F1 (over classes
that occur in the labels or the predictions) and macro one-vs-rest AUROC. Re-computing them here
from ``labels`` and ``probs`` lets every bootstrap resample be scored the same way.

A test score has two sources of variance: which test images were drawn, and which training run
(seed) produced the model (``launch.py --repeats R`` retrains the winner with R seeds). The
two-level bootstrap (:func:`seed_bootstrap`) covers both: each resample draws the N test images
with replacement and, per model, R of its seeds with replacement, and scores the mean over the
drawn seeds of the metric on the drawn images. The point estimate is the mean over seeds of the
metric on all images. With R = 1 it is the usual bootstrap over images. With R = 3 the seed part is
crude (a resample sees at most three distinct training runs, so the interval's seed share is
itself uncertain); more seeds make it honest. When models are compared, every resample draws the
same images for all of them (paired) and the seeds of each model independently, so a difference's
interval reflects how the models disagree and how much each varies between training runs.

The images are drawn per class (stratified): each resample holds as many images of each class as
the test split does. A plain draw can miss a rare class (one positive in 20 images: about a third
of the resamples), where AUROC is undefined and balanced accuracy or macro F1 silently average over
fewer classes; dropping those resamples would bias the interval towards the resamples that happen
to hold every class. Stratified, every resample scores the same classes as the point estimate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

# A difference whose interval includes 0 and is wider than +-0.05 cannot rule out a difference of
# 0.05 or more (e.g. 3 images in 60 for accuracy): too wide to conclude "no difference".
CONCLUSIVE_HALF_WIDTH = 0.05

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
    """A point estimate with a bootstrap percentile interval.

    ``undefined`` counts the resamples where the metric had no value (e.g. a saliency IoU drawn on
    images without a lesion); the percentiles are over the others, and ``str`` says how many.
    """

    value: float
    low: float
    high: float
    undefined: int = 0

    def __str__(self) -> str:
        said = f"{self.value:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"
        return said + (f" ({self.undefined} resamples undefined, left out)" if self.undefined else "")


def _interval(value: float, samples: np.ndarray, level: float) -> Interval:
    """The central ``level`` percentile interval of the finite ``samples`` (e.g. 2.5th to 97.5th for 0.95)."""
    finite = samples[np.isfinite(samples)]
    undefined = int(samples.size - finite.size)
    if not finite.size:
        return Interval(value, float("nan"), float("nan"), undefined)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return Interval(value, float(low), float(high), undefined)


def stratified_draws(labels: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Image indices [B, N]: each resample draws, with replacement, as many images of each class as there are.

    Classes are drawn in sorted order, each with ``rng.integers``; with a single class this is the
    plain bootstrap draw ``rng.integers(0, N, (B, N))``.
    """
    parts = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        parts.append(members[rng.integers(0, len(members), size=(resamples, len(members)))])
    return np.concatenate(parts, axis=1)


def seed_bootstrap(
    labels: np.ndarray,
    probs_seeds: list[np.ndarray],
    metric: Metric,
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = 0.95,
) -> tuple[list[Interval], list[Interval]]:
    """Per-model intervals over images and seeds, and intervals of each model's difference vs the first.

    Each resample draws the same test images (with replacement) for every model and, per model, as
    many of its seeds as it has (with replacement); a model's resample score is the mean over its
    drawn seeds of ``metric`` on the drawn images (see the module docstring). The image draws come
    first from the generator (:func:`stratified_draws`), so models with one seed, or with identical
    seeds, get exactly the intervals of the image-only bootstrap. A resample where the metric is
    still undefined is left out of the percentiles and counted (``Interval.undefined``).

    Args:
        labels: true class per test image [N].
        probs_seeds: per model, class probabilities [R, N, K] of its R seeds (R may differ between
            models) for the same images in the same order.
        metric: a function of (labels, probs), e.g. one of ``METRICS``.
        resamples: number of bootstrap resamples.
        seed: seed of the resampling.
        level: coverage of the intervals.
    """
    rng = np.random.default_rng(seed)
    draws = stratified_draws(labels, resamples, rng)
    samples = np.empty((resamples, len(probs_seeds)))  # [B, models]
    for m, probs in enumerate(probs_seeds):
        per_seed = np.array([[metric(labels[idx], p[idx]) for p in probs] for idx in draws])  # [B, R]
        picks = rng.integers(0, len(probs), size=(resamples, len(probs)))
        samples[:, m] = np.take_along_axis(per_seed, picks, axis=1).mean(axis=1)
    points = [float(np.mean([metric(labels, p) for p in probs])) for probs in probs_seeds]
    values = [_interval(points[m], samples[:, m], level) for m in range(len(points))]
    diffs = [_interval(points[m] - points[0], samples[:, m] - samples[:, 0], level) for m in range(len(points))]
    return values, diffs


def paired_bootstrap(
    labels: np.ndarray,
    probs: list[np.ndarray],
    metric: Metric,
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = 0.95,
) -> tuple[list[Interval], list[Interval]]:
    """:func:`seed_bootstrap` of one trained model per entry: probabilities [N, K] each."""
    return seed_bootstrap(labels, [p[None] for p in probs], metric, resamples=resamples, seed=seed, level=level)


@dataclass
class SeedScore:
    """A test metric over R seeds and N images: mean and sd over seeds, two-level bootstrap interval."""

    mean: float
    sd: float | None  # sample sd between seeds (ddof=1); None with one seed, where it cannot be estimated
    low: float
    high: float
    seeds: int
    images: int

    def __str__(self) -> str:
        spread = "one seed: no sd between seeds" if self.sd is None else f"sd {self.sd:.3f}"
        return (
            f"over {self.seeds} seed{'s' if self.seeds > 1 else ''} x {self.images} images: mean {self.mean:.3f} "
            f"({spread}), 95% interval [{self.low:.2f}, {self.high:.2f}]"
        )

    def metrics(self, name: str) -> dict[str, float]:
        """``test_seeds/<name>_mean``, ``_sd``, ``_low`` and ``_high``, as logged on the launch's run.

        With one seed ``_sd`` is not logged: there is no spread between seeds to measure (0 would say
        the training runs agree, NaN would end up in the sentences that quote it).
        """
        keys = ("mean", "low", "high") if self.sd is None else ("mean", "sd", "low", "high")
        return {f"test_seeds/{name}_{key}": getattr(self, key) for key in keys}


def seed_scores(labels: np.ndarray, probs_seeds: np.ndarray) -> dict[str, SeedScore]:
    """Every metric of ``METRICS`` for one model's seeds (probabilities [R, N, K]), 95% intervals."""
    scores = {}
    for name, metric in METRICS.items():
        per_seed = [metric(labels, p) for p in probs_seeds]
        sd = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else None
        (interval,), _ = seed_bootstrap(labels, [probs_seeds], metric)
        scores[name] = SeedScore(interval.value, sd, interval.low, interval.high, len(per_seed), len(labels))
    return scores
