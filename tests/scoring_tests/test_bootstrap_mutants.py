"""The bootstrap module pinned where mutation testing found it loose (issue 24 item 5).

``tests/report_tests/test_statistics.py`` pins the percentiles, the draws and the seeds' sd; these
tests add what its mutants slipped past: metrics on a test set that lacks a class, the two-level
bootstrap replayed draw by draw (seeds and differences), the keyword arguments of the wrappers, and
the sentences and logged keys of a seed score with two seeds.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from medtune.scoring.bootstrap import (
    METRICS,
    Interval,
    _interval,
    auroc,
    balanced_accuracy,
    f1_macro,
    paired_bootstrap,
    seed_bootstrap,
    seed_scores,
    stratified_draws,
)

# Three-class probabilities of four images whose labels hold classes 0 and 1 only: a test split (or a
# resample) without class 2. Class 0 scores 0.6, 0.35 (positives) over 0.25, 0.1: AUROC 1. Class 1
# scores 0.4, 0.5 (positives) over 0.3, 0.45: 3 of 4 pairs ordered, AUROC 0.75.
LABELS = np.array([0, 0, 1, 1])
PROBS = np.array([[0.6, 0.3, 0.1], [0.35, 0.45, 0.2], [0.25, 0.4, 0.35], [0.1, 0.5, 0.4]])


def test_auroc_averages_the_classes_present_and_is_nan_without_two_kinds() -> None:
    # Class 2 has no positive image: it is left out, not averaged in as NaN: (1 + 0.75) / 2.
    assert auroc(LABELS, PROBS) == pytest.approx(0.875)
    # One class only: no class has both positives and negatives, so AUROC is undefined: NaN, said
    # quietly (not numpy's "Mean of empty slice" warning in the middle of a report).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(auroc(np.array([1, 1, 1, 1]), PROBS))


def test_balanced_accuracy_and_f1_use_the_classes_that_occur() -> None:
    # Predictions 0, 1, 1, 1: recall 1/2 on class 0 and 1 on class 1; class 2, absent from the labels,
    # is not averaged in as a recall of 0 (that would give 1/2).
    assert balanced_accuracy(LABELS, PROBS) == pytest.approx(0.75)
    # Labels 0, 1 and both predicted 0: class 0 has tp 1 and 1 wrong (F1 2/3), class 1 tp 0 and 1 wrong
    # (F1 0), class 2 neither predicted nor present (left out): macro F1 1/3, not 2/3 nor 0.
    both_zero = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0]])
    assert f1_macro(np.array([0, 1]), both_zero) == pytest.approx(1 / 3)
    # All right on two of three classes: F1 1 on each present class; the absent one is not a 0.
    assert f1_macro(np.array([0, 1]), np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]])) == 1.0
    # No image at all: no class to score, NaN (without numpy's empty-mean warning).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(f1_macro(np.array([], dtype=int), np.zeros((0, 3))))


def test_a_class_missing_from_the_test_split_leaves_every_resample_defined() -> None:
    labels = np.repeat(LABELS, 5)  # 10 images of class 0, 10 of class 1, none of class 2
    probs = np.repeat(PROBS, 5, axis=0)
    (interval,), _ = seed_bootstrap(labels, [probs[None]], METRICS["auroc"], resamples=200)
    # Every resample holds both present classes (stratified): none is undefined, none is dropped.
    assert interval.undefined == 0 and interval.value == pytest.approx(0.875)
    assert 0.5 <= interval.low <= 0.875 <= interval.high <= 1.0


def test_an_interval_with_no_defined_resample() -> None:
    interval = _interval(0.4, np.full(6, np.nan), 0.95)
    # Every resample undefined: no percentile to take; the point stays and all six are counted.
    assert interval.value == 0.4 and interval.undefined == 6
    assert math.isnan(interval.low) and math.isnan(interval.high)
    assert str(interval) == "+0.400 [+nan, +nan] (6 resamples undefined, left out)"


def test_single_class_draws_are_the_plain_bootstrap_draw() -> None:
    # The docstring's promise: with one class, rng.integers(0, N, (B, N)) exactly.
    draws = stratified_draws(np.zeros(9, dtype=int), 50, np.random.default_rng(5))
    assert np.array_equal(draws, np.random.default_rng(5).integers(0, 9, (50, 9)))
    # Two classes: class 0's members drawn first (columns 0-2), then class 1's (columns 3-4).
    labels = np.array([1, 0, 1, 0, 0])
    rng = np.random.default_rng(6)
    expected = np.concatenate(
        [np.array([1, 3, 4])[rng.integers(0, 3, (20, 3))], np.array([0, 2])[rng.integers(0, 2, (20, 2))]], axis=1
    )
    assert np.array_equal(stratified_draws(labels, 20, np.random.default_rng(6)), expected)


def _replay(labels: np.ndarray, models: list[np.ndarray], resamples: int, seed: int) -> np.ndarray:
    """The two-level bootstrap's resampled scores [B, models], drawn by hand as the docstring says."""
    rng = np.random.default_rng(seed)
    draws = stratified_draws(labels, resamples, rng)
    out = np.empty((resamples, len(models)))
    for m, probs in enumerate(models):
        per_seed = np.array([[METRICS["acc"](labels[idx], p[idx]) for p in probs] for idx in draws])
        picks = rng.integers(0, len(probs), (resamples, len(probs)))
        out[:, m] = np.take_along_axis(per_seed, picks, axis=1).mean(axis=1)
    return out


def test_two_level_bootstrap_replayed_draw_by_draw() -> None:
    rng = np.random.default_rng(2)
    labels = np.arange(30) % 3
    a, b = rng.dirichlet(np.ones(3), (3, 30)), rng.dirichlet(np.ones(3), (2, 30))  # 3 and 2 seeds
    values, diffs = seed_bootstrap(labels, [a, b], METRICS["acc"], resamples=300, seed=11, level=0.9)
    samples = _replay(labels, [a, b], 300, 11)
    points = [np.mean([METRICS["acc"](labels, p) for p in probs]) for probs in (a, b)]
    # level 0.9: the 5th and 95th percentiles of each model's scores and of b's minus a's.
    for m in range(2):
        expected = Interval(points[m], *np.percentile(samples[:, m], [5, 95]))
        assert (values[m].value, values[m].low, values[m].high) == pytest.approx(
            (expected.value, expected.low, expected.high), abs=1e-12
        )
    low, high = np.percentile(samples[:, 1] - samples[:, 0], [5, 95])
    assert (diffs[1].value, diffs[1].low, diffs[1].high) == pytest.approx((points[1] - points[0], low, high), abs=1e-12)
    # The first model against itself: exactly 0, every resample.
    assert (diffs[0].value, diffs[0].low, diffs[0].high, diffs[0].undefined) == (0.0, 0.0, 0.0, 0)
    assert low < high and values[0].low < values[0].high  # real spreads, not a degenerate replay


def test_seeds_that_disagree_widen_the_interval_and_identical_seeds_do_not() -> None:
    labels = np.arange(10) % 2
    right, wrong = np.eye(2)[labels], np.eye(2)[1 - labels]
    # Seed A right on every image, seed B wrong on every one: each resample scores the share of A
    # among the two seeds it draws, 0, 0.5 or 1 (a quarter of the resamples draw B twice): [0, 1].
    (interval,), _ = seed_bootstrap(labels, [np.stack([right, wrong])], METRICS["acc"], resamples=200)
    assert (interval.value, interval.low, interval.high) == (0.5, 0.0, 1.0)
    # Identical seeds: exactly the image-only bootstrap's interval (the image draws come first).
    probs = np.random.default_rng(4).dirichlet([1, 1], 10)
    (three,), _ = seed_bootstrap(labels, [np.stack([probs] * 3)], METRICS["auroc"], resamples=200)
    (one,), _ = seed_bootstrap(labels, [probs[None]], METRICS["auroc"], resamples=200)
    assert (three.low, three.high) == (one.low, one.high) and one.low < one.high


def test_paired_bootstrap_passes_resamples_seed_and_level_on() -> None:
    rng = np.random.default_rng(8)
    labels = np.arange(24) % 2
    a, b = rng.dirichlet([1, 1], 24), rng.dirichlet([1, 1], 24)
    kwargs = {"resamples": 150, "seed": 4, "level": 0.8}
    paired = paired_bootstrap(labels, [a, b], METRICS["auroc"], **kwargs)
    assert paired == seed_bootstrap(labels, [a[None], b[None]], METRICS["auroc"], **kwargs)
    # ... and each of them matters: the default resamples, seed or level give other intervals.
    for changed in ({"resamples": 100}, {"seed": 0}, {"level": 0.95}):
        assert paired_bootstrap(labels, [a, b], METRICS["auroc"], **{**kwargs, **changed}) != paired


def test_two_seeds_have_a_sample_sd_and_every_logged_key() -> None:
    labels = np.arange(10) % 2
    probs = np.stack([np.eye(2)[labels], np.eye(2)[labels]])
    probs[1, :4] = np.eye(2)[1 - labels[:4]]  # seed 1 wrong on 4 images: accuracies 1.0 and 0.6
    scores = seed_scores(labels, probs)
    assert set(scores) == set(METRICS)
    acc = scores["acc"]
    # Two values 0.2 from their mean: sample sd 0.2 * sqrt(2) = 0.28284 (the population sd would be 0.2).
    assert (acc.mean, acc.seeds, acc.images) == (pytest.approx(0.8), 2, 10)
    assert acc.sd == pytest.approx(0.2 * math.sqrt(2))
    assert acc.metrics("acc") == {
        "test_seeds/acc_mean": acc.mean,
        "test_seeds/acc_sd": acc.sd,
        "test_seeds/acc_low": acc.low,
        "test_seeds/acc_high": acc.high,
    }
    assert str(acc) == f"over 2 seeds x 10 images: mean 0.800 (sd 0.283), 95% interval [{acc.low:.2f}, {acc.high:.2f}]"
    assert acc.low < 0.8 < acc.high
