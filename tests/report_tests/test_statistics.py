"""Statistics pinned by hand-checkable numbers: the bootstrap's percentiles and draws, the seeds' sd,
the corrected t-test on 2 folds, fold-metric directions, and the fold table with equal differences.

Each test is aimed at a way the code could be wrong and still run (an 80% interval called 95%, a
population sd, image 0 never drawn, a resample without a class dropped, 2 folds refused, a
lower-is-better metric read the other way): it fails on that version of the code.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medtune.report.cv import (
    OPTIMISM,
    FoldComparison,
    FoldScores,
    FoldsError,
    FoldSizes,
    corrected_t,
    fold_rows,
    fold_scores,
    method,
    pair,
    parse_sizes,
)
from medtune.report.verdicts import fold_verdicts
from medtune.scoring.bootstrap import (
    METRICS,
    RESAMPLES,
    Interval,
    _interval,
    paired_bootstrap,
    seed_bootstrap,
    seed_scores,
    stratified_draws,
)

DIGEST = "0123456789abcdef"


@pytest.mark.parametrize(("level", "low", "high"), [(0.95, 25.0, 975.0), (0.9, 50.0, 950.0), (0.5, 250.0, 750.0)])
def test_percentile_interval_on_arange_1001(level: float, low: float, high: float) -> None:
    # 0..1000: the p-th percentile is 10 p exactly, so a 95% interval is [25, 975]: symmetric tails
    # of 2.5% each (an 80% or 96.7% interval, or tails of 2.5% and 5%, give other numbers).
    interval = _interval(500.0, np.arange(1001.0), level)
    assert (interval.value, interval.undefined) == (500.0, 0)
    assert (interval.low, interval.high) == (pytest.approx(low, abs=1e-9), pytest.approx(high, abs=1e-9))


def test_default_interval_is_the_central_95_percent_of_the_resamples() -> None:
    # The bootstrap replayed by hand with the same generator: the default interval must be the
    # 2.5th and 97.5th percentiles of the 1000 resampled scores, for every public entry point.
    rng = np.random.default_rng(3)
    labels = np.arange(40) % 2
    probs = rng.dirichlet([1, 1], size=40)
    auroc = METRICS["auroc"]  # nearly continuous over resamples, so any other percentile differs
    replay = np.random.default_rng(0)
    draws = stratified_draws(labels, RESAMPLES, replay)
    samples = np.array([auroc(labels[idx], probs[idx]) for idx in draws])
    low, high = np.percentile(samples, [2.5, 97.5])
    (one,), _ = seed_bootstrap(labels, [probs[None]], auroc)
    (two, _), _ = paired_bootstrap(labels, [probs, probs], auroc)
    score = seed_scores(labels, probs[None])["auroc"]
    assert (one.low, one.high) == (low, high) and (two.low, two.high) == (low, high)
    assert (score.low, score.high, score.mean) == (low, high, auroc(labels, probs))
    assert high - low > 0.1  # 40 images: a real interval, not a degenerate one


@pytest.mark.parametrize("classes", [1, 2])
def test_every_image_is_resampled_including_the_first_and_the_last(classes: int) -> None:
    # Column 0 of probs carries the image's index: the metric records which images each resample drew.
    n = 7
    labels = np.arange(n) % classes
    probs = np.stack([np.arange(n), np.zeros(n)], axis=1).astype(float)
    drawn: list[np.ndarray] = []

    def record(lab: np.ndarray, p: np.ndarray) -> float:
        drawn.append(p[:, 0].astype(int))
        return float(lab.mean())

    seed_bootstrap(labels, [probs[None]], record, resamples=200)
    counts = np.bincount(np.concatenate(drawn[:200]), minlength=n)
    # Every image, 0 and n-1 included, is drawn about 200 times (an off-by-one never draws one end).
    assert counts.shape == (n,) and counts.min() > 120 and counts.sum() == 200 * n


def test_a_rare_class_is_in_every_resample_and_none_is_dropped() -> None:
    # One positive in 20 images: a plain bootstrap misses it in (19/20)^20 = 36% of the resamples,
    # where binary AUROC is undefined. Stratified draws keep the class counts in every resample.
    labels = np.array([1] + [0] * 19)
    probs = np.stack([np.linspace(0.9, 0.1, 20), np.linspace(0.1, 0.9, 20)], axis=1)
    seen: list[tuple[int, int]] = []

    def auroc(lab: np.ndarray, p: np.ndarray) -> float:
        seen.append((int((lab == 0).sum()), int((lab == 1).sum())))
        return METRICS["auroc"](lab, p)

    (interval,), _ = seed_bootstrap(labels, [probs[None]], auroc, resamples=300)
    assert set(seen) == {(19, 1)}
    assert interval.undefined == 0 and math.isfinite(interval.low) and math.isfinite(interval.high)
    # Three classes, the third with one image: still in every resample (balanced accuracy over 3 classes).
    draws = stratified_draws(np.array([0, 0, 0, 1, 1, 2]), 500, np.random.default_rng(1))
    assert all(sorted(np.bincount(np.array([0, 0, 0, 1, 1, 2])[d], minlength=3)) == [1, 2, 3] for d in draws)


def test_undefined_resamples_are_counted_and_said() -> None:
    samples = np.array([np.nan, 0.5, np.nan, 0.7, 0.6])
    interval = _interval(0.6, samples, 0.95)
    assert interval.undefined == 2 and interval.low >= 0.5 and interval.high <= 0.7
    assert str(interval).endswith("(2 resamples undefined, left out)")
    assert str(Interval(0.1, 0.0, 0.2)) == "+0.100 [+0.000, +0.200]"


def _seeds(correct: list[int], n: int = 10) -> np.ndarray:
    """Probabilities [R, n, 2] of R seeds, seed r right on its first ``correct[r]`` images."""
    labels = np.arange(n) % 2
    out = np.zeros((len(correct), n, 2))
    for r, right in enumerate(correct):
        pred = np.where(np.arange(n) < right, labels, 1 - labels)
        out[r, np.arange(n), pred] = 1.0
    return out


def test_seed_sd_is_the_sample_sd() -> None:
    labels = np.arange(10) % 2
    score = seed_scores(labels, _seeds([5, 6, 9]))["acc"]
    # Accuracies 0.5, 0.6, 0.9: mean 2/3; squared deviations 0.02778 + 0.00444 + 0.05444 = 0.08667;
    # sample sd sqrt(0.08667 / 2) = 0.20817 (the population sd, / 3, would be 0.16997).
    assert score.mean == pytest.approx(2 / 3) and score.sd == pytest.approx(0.20817, abs=1e-5)
    assert score.metrics("acc")["test_seeds/acc_sd"] == pytest.approx(0.20817, abs=1e-5)
    assert "over 3 seeds x 10 images: mean 0.667 (sd 0.208)" in str(score)


def test_one_seed_has_no_sd_and_says_so() -> None:
    labels = np.arange(10) % 2
    score = seed_scores(labels, _seeds([7]))["acc"]
    # One training run: no spread between seeds can be measured; not 0 (agreement), not NaN, not 1.
    assert score.sd is None and score.seeds == 1
    assert set(score.metrics("acc")) == {"test_seeds/acc_mean", "test_seeds/acc_low", "test_seeds/acc_high"}
    assert "over 1 seed x 10 images: mean 0.700 (one seed: no sd between seeds)" in str(score)
    assert "nan" not in str(score).lower()


def test_corrected_t_on_two_folds_by_hand() -> None:
    # 2 folds of 20 out of 40 pooled images: n_test/n_train = 20/20 = 1; d = [0.02, 0.06], J = 2, df = 1.
    # mean 0.04; s^2 = (0.02^2 + 0.02^2) / 1 = 0.0008; corrected variance (1/2 + 1) * 0.0008 = 0.0012,
    # se = 0.034641; t = 0.04 / 0.034641 = 1.1547. With df = 1 (Cauchy) t_{0.975} = tan(0.475 pi)
    # = 12.7062, half-width 0.44016; p = 1 - 2 atan(1.1547) / pi = 0.45437.
    sizes = FoldSizes(pool=40, held_out=[20, 20])
    result = corrected_t([0.02, 0.06], sizes)
    assert (result.df, result.folds, result.n_test, result.n_train) == (1, 2, 20, 20)
    assert result.mean == pytest.approx(0.04) and result.sd == pytest.approx(math.sqrt(0.0008))
    assert result.t == pytest.approx(1.1547, abs=1e-4)
    assert result.low == pytest.approx(0.04 - 0.44016, abs=1e-5)
    assert result.high == pytest.approx(0.04 + 0.44016, abs=1e-5)
    assert result.p == pytest.approx(0.45437, abs=1e-5)
    assert str(result) == "+0.040 [-0.400, +0.480] t=1.15 df=1 p=0.454"
    with pytest.raises(ValueError, match="at least 2 paired differences, got 1"):
        corrected_t([0.02], sizes)


def test_two_fold_plan_is_read_and_described() -> None:
    # The smoke setting (--folds 2): folds.json with two folds is accepted and described fold by fold.
    raw = {"digest": DIGEST, "val_image_ids": [list(range(10)), list(range(10, 21))], "pool_size": 21}
    sizes = parse_sizes(json.dumps(raw).encode(), "launch x")
    assert (sizes.pool, sizes.held_out, sizes.digest) == (21, [10, 11], DIGEST)
    assert sizes.ratio == pytest.approx((10 / 11 + 11 / 10) / 2)
    metrics = {"cv/fold0/val/acc": 0.8, "cv/fold1/val/acc": 0.7, "cv/fold1/val/auroc": 0.9}
    params = {"cv_folds": "2", "metric": "val/acc", "mode": "max"}
    scores = fold_scores("e", "run", params, {"cv_folds_digest": DIGEST}, metrics, json.dumps(raw).encode())
    # val/auroc is missing on fold 0: left out; val/acc is kept with both folds.
    assert scores is not None and list(scores.scores) == ["val/acc"] and scores.folds == 2
    assert scores.describe("val/acc") == "0.750 +- 0.071 (2 folds, 21 pooled images)"
    other = FoldScores("f", "run2", DIGEST, sizes, {"val/acc": np.array([0.85, 0.72])}, "val/acc", "max")
    result = pair(["e", "f"], [scores, other])
    assert isinstance(result, FoldComparison)
    said = method(result)
    assert "the same 2 folds of 21 pooled" in said and "scored images per fold 10, 11 (of 21)" in said
    assert fold_rows(result, "val/acc")[1][1][-2] == "1"  # df = 1
    one = {"digest": DIGEST, "val_image_ids": [list(range(10))], "pool_size": 21}
    with pytest.raises(FoldsError, match="holds 1 folds"):
        parse_sizes(json.dumps(one).encode(), "launch x")


SIZES = FoldSizes(pool=100, held_out=[20] * 5)
BASE = np.array([0.80, 0.82, 0.78, 0.81, 0.79])
NOISE = np.array([0.002, 0.005, -0.001, 0.004, 0.003])


def _scores(name: str, values: dict[str, np.ndarray], metric: str = "val/balanced_acc", mode: str = "max"):
    return FoldScores(name, f"{name}-run", DIGEST, SIZES, values, metric, mode)


def test_lower_is_better_secondary_metric_turns_its_verdict() -> None:
    # The objective (balanced accuracy, max) is equal; b fails on 10% more images on every fold
    # (fail_rate, lower is better, not the objective): a is better on fail_rate, not b.
    a = _scores("a", {"val/balanced_acc": BASE, "val/fail_rate": BASE / 10})
    b = _scores("b", {"val/balanced_acc": BASE + NOISE, "val/fail_rate": BASE / 10 + 0.1 + NOISE})
    result = pair(["a", "b"], [a, b])
    assert isinstance(result, FoldComparison)
    assert result.lower_is_better("val/fail_rate") and not result.lower_is_better("val/balanced_acc")
    lines = {line.split(": ")[0]: line for line in fold_verdicts(result)}
    assert lines["b vs a, fold-wise val/fail_rate"].endswith(": a is better")
    # With a minimised objective, the other (higher-better) metrics keep their own direction.
    c = _scores("c", {"val/hd95": BASE, "val/acc": BASE}, "val/hd95", "min")
    d = _scores("d", {"val/hd95": BASE + 0.1 + NOISE, "val/acc": BASE + 0.1 + NOISE}, "val/hd95", "min")
    lines = fold_verdicts(pair(["c", "d"], [c, d]))
    assert lines[0].startswith("d vs c, fold-wise val/hd95: ") and lines[0].endswith(": c is better")
    assert lines[1].startswith("d vs c, fold-wise val/acc: ") and lines[1].endswith(": d is better")


def test_equal_fold_differences_fill_the_fold_table() -> None:
    a = _scores("a", {"val/balanced_acc": BASE})
    b = _scores("b", {"val/balanced_acc": BASE + 0.02})
    result = pair(["a", "b"], [a, b])
    header, rows = fold_rows(result, "val/balanced_acc")
    # Every difference is +0.02: no sd, no t, no p; the row says so instead of raising.
    assert len(header) == len(rows[1]) == 9
    assert rows[1][5:] == ["+0.020 on every fold", "-", "4", "-"] and rows[0][5:] == ["-"] * 4


def test_fold_wise_method_says_the_scores_are_optimistic() -> None:
    a = _scores("a", {"val/balanced_acc": BASE})
    b = _scores("b", {"val/balanced_acc": BASE + NOISE})
    said = method(pair(["a", "b"], [a, b]))
    # Without nesting, the fold scores chose the winner: the line says they are optimistic.
    assert said.endswith(OPTIMISM) and "chose the winner" in OPTIMISM and "optimistic" in OPTIMISM
    assert "20 scored vs 80 training images per fold" in said
