"""Cross-validated launches: their fold scores, and the corrected resampled t-test between two of them.

A launch with ``cv: {folds: K}`` pools the train and val splits, cuts them into K folds (recorded in
``folds.json`` on the parent run, with a digest in the ``cv_folds_digest`` tag) and logs there the
winner's score on each fold's held-out images (``cv/fold{k}/{name}``). Two launches with the same
digest were scored on the same K held-out sets, so their fold scores pair up fold by fold.

Those fold scores are not held-out estimates of the winner: they are the scores of the trial and
epoch that maximised their mean (a maximum over trials x epochs), so they chose the winner and are
biased upwards, the more so for a space that searched more keys. The comparison says so (:data:`OPTIMISM`).

The K paired differences are not independent: any two folds share most of their training images,
so a plain paired t-test is overconfident. Nadeau and Bengio (2003) correct the variance of the
mean difference from ``s^2 / J`` to ``(1/J + n_test/n_train) s^2`` (J differences, n_test held-out
and n_train training images per fold); Bouckaert and Frank (2004) use it with J = K folds x r
repetitions (here r = 1). The statistic has J - 1 degrees of freedom.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from scipy import stats

from medtune.metrics import lower_is_better
from medtune.tracking.store import TrackingError, read_artifact

FOLDS_FILE = "folds.json"  # on the parent run: the fold assignment and the pooled size
FOLD_METRIC = re.compile(r"^cv/fold(\d+)/(.+)$")


class FoldsError(TrackingError):
    """A cross-validated launch whose fold records cannot be read; the message is one line."""


@dataclass
class FoldSizes:
    """How many pooled images there are and how many each fold holds out (``folds.json``)."""

    pool: int
    held_out: list[int]
    digest: str = ""

    @property
    def n_test(self) -> float:
        """Mean held-out (scored) images per fold."""
        return float(np.mean(self.held_out))

    @property
    def n_train(self) -> float:
        """Mean training images per fold."""
        return self.pool - self.n_test

    @property
    def ratio(self) -> float:
        """Mean over folds of held-out / training images: the correction's n_test/n_train."""
        return float(np.mean([h / (self.pool - h) for h in self.held_out]))


@dataclass
class CorrectedT:
    """The corrected resampled t-test of J paired differences: their mean, its 95% interval, t, p."""

    mean: float
    low: float
    high: float
    t: float  # NaN when every difference is the same (sd 0): the test is undefined
    p: float
    df: int
    folds: int  # J, the number of paired differences
    n_train: float
    n_test: float
    sd: float

    @property
    def constant(self) -> bool:
        return self.sd == 0.0

    def __str__(self) -> str:
        if self.constant:
            return f"{self.mean:+.3f} on every fold (sd 0: no t-test)"
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}] t={self.t:.2f} df={self.df} p={self.p:.3f}"


def corrected_t(diffs: Sequence[float], sizes: FoldSizes, *, level: float = 0.95) -> CorrectedT:
    """Nadeau and Bengio's corrected resampled t-test of paired per-fold differences (module docstring).

    Args:
        diffs: one difference per fold (J >= 2), e.g. experiment B's fold score minus A's.
        sizes: the folds' sizes, for n_test/n_train.
        level: coverage of the interval.
    """
    d = np.asarray(diffs, dtype=float)
    if d.size < 2:
        raise ValueError(f"the corrected t-test needs at least 2 paired differences, got {d.size}")
    mean, df = float(d.mean()), d.size - 1
    if np.ptp(d) == 0:  # all equal: s^2 = 0, t would divide by zero; the interval is the point itself
        return CorrectedT(mean, mean, mean, math.nan, math.nan, df, d.size, sizes.n_train, sizes.n_test, 0.0)
    var = float(d.var(ddof=1))
    se = math.sqrt((1 / d.size + sizes.ratio) * var)
    t = mean / se
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    p = float(2 * stats.t.sf(abs(t), df))
    return CorrectedT(mean, mean - half, mean + half, t, p, df, d.size, sizes.n_train, sizes.n_test, math.sqrt(var))


@dataclass
class FoldScores:
    """A cross-validated launch's per-fold validation scores (the winning configuration's)."""

    experiment: str
    run_id: str
    digest: str
    sizes: FoldSizes
    scores: dict[str, np.ndarray]  # fold metric name (e.g. ``val/balanced_acc``) -> [K]
    metric: str  # the search's objective
    mode: str
    nested: bool = False  # a nested launch's outer folds (``medtune.report.nested``): scores that chose nothing

    @property
    def folds(self) -> int:
        return len(self.sizes.held_out)

    def describe(self, name: str) -> str:
        """``0.812 +- 0.034 (5 folds, 240 pooled images)``: mean and sd (ddof=1) over the folds."""
        values = self.scores[name]
        return f"{values.mean():.3f} +- {values.std(ddof=1):.3f} ({self.folds} folds, {self.sizes.pool} pooled images)"


def parse_sizes(data: bytes | None, where: str) -> FoldSizes:
    """The pooled size and each fold's held-out count from ``folds.json``; one-line error when unusable."""
    if data is None:
        raise FoldsError(f"{where} is cross-validated but has no {FOLDS_FILE}")
    try:
        raw = json.loads(data)
        held = [len(ids) for ids in raw["val_image_ids"]]
        pool = int(raw["pool_size"])
    except (ValueError, KeyError, TypeError) as err:
        raise FoldsError(f"{where}: {FOLDS_FILE} is unreadable ({type(err).__name__}: {err})") from None
    if len(held) < 2 or not all(0 < h < pool for h in held):
        raise FoldsError(f"{where}: {FOLDS_FILE} holds {len(held)} folds of {held} images out of {pool}")
    return FoldSizes(pool, held, str(raw.get("digest", "")))


def fold_scores(
    experiment: str,
    run_id: str,
    params: dict[str, str],
    tags: dict[str, str],
    metrics: dict[str, float],
    sizes_json: bytes | None,
) -> FoldScores | None:
    """A parent run's fold scores, or None when the launch is not cross-validated (no ``cv_folds``).

    Only fold metrics logged, and finite, for every fold 0..K-1 are kept (an AUROC can be undefined on a fold).

    Raises:
        FoldsError: ``folds.json`` is missing or disagrees with the ``cv_folds`` param or digest tag.
    """
    if "cv_folds" not in params:
        return None
    where = f"launch {run_id[:8]} of '{experiment}'"
    if not params["cv_folds"].isdigit():
        raise FoldsError(f"{where}: param cv_folds is {params['cv_folds']!r}, expected a number of folds")
    k = int(params["cv_folds"])
    sizes = parse_sizes(sizes_json, where)
    digest = tags.get("cv_folds_digest", "")
    if len(sizes.held_out) != k or (sizes.digest and sizes.digest != digest):
        raise FoldsError(
            f"{where}: {FOLDS_FILE} ({len(sizes.held_out)} folds, digest {sizes.digest or '?'}) disagrees with "
            f"cv_folds={k} and tag cv_folds_digest={digest or '?'}"
        )
    by_name: dict[str, dict[int, float]] = {}
    for key, value in metrics.items():
        if match := FOLD_METRIC.match(key):
            by_name.setdefault(match[2], {})[int(match[1])] = value
    scores = {n: np.array([v[i] for i in range(k)]) for n, v in by_name.items() if set(range(k)) <= set(v)}
    scores = {n: values for n, values in scores.items() if np.isfinite(values).all()}
    return FoldScores(experiment, run_id, digest, sizes, scores, params.get("metric", ""), params.get("mode", "max"))


def read_fold_scores(client: MlflowClient, experiment: str, run: Run) -> FoldScores | str | None:
    """:func:`fold_scores` of a parent run read from the tracking store; the error's line when unreadable."""

    params, run_id = run.data.params, run.info.run_id
    try:
        sizes_json = read_artifact(client, run_id, FOLDS_FILE) if "cv_folds" in params else None
        return fold_scores(experiment, run_id, params, run.data.tags, run.data.metrics, sizes_json)
    except FoldsError as err:
        return str(err)


@dataclass
class FoldComparison:
    """Per shared fold metric: the corrected t-test of each experiment against the first (None for the first)."""

    entries: list[FoldScores]
    tests: dict[str, list[CorrectedT | None]]

    def lower_is_better(self, name: str) -> bool:
        """The objective follows the search's mode; other metrics follow ``medtune.metrics.lower_is_better``."""
        first = self.entries[0]
        if name == first.metric:
            return first.mode == "min"
        return lower_is_better(name)


def pair(experiments: list[str], scores: list[FoldScores | str | None]) -> FoldComparison | str:
    """The fold-wise comparison of every launch against the first, or the one line saying why there is none.

    Args:
        experiments: the compared experiments' names, in order.
        scores: per experiment, its :class:`FoldScores`, None when not cross-validated, or a string
            saying why its fold records cannot be read.

    Returns "" when no launch is cross-validated (nothing to say). Losses are left out: each
    configuration's loss is its own, so two losses are not comparable.
    """
    unread = [s for s in scores if isinstance(s, str)]
    if unread:
        return f"fold-wise test not shown: {unread[0]}"
    cv = [s for s in scores if isinstance(s, FoldScores)]
    if not cv:
        return ""
    if len(cv) < len(scores):
        plain = [e for e, s in zip(experiments, scores) if s is None]
        return (
            f"fold-wise test not shown: {', '.join(plain)} not cross-validated "
            f"({', '.join(s.experiment for s in cv)} {'is' if len(cv) == 1 else 'are'})"
        )
    first = cv[0]
    for other in cv[1:]:
        if other.digest != first.digest or not first.digest:
            return (
                f"fold-wise test not shown: {first.experiment} and {other.experiment} were cross-validated on "
                f"different folds (cv_folds_digest {first.digest or '?'} vs {other.digest or '?'}); "
                "only the test-split bootstrap applies"
            )
    shared = set.intersection(*(set(s.scores) for s in cv))
    names = sorted((n for n in shared if "loss" not in n.split("/")[-1]), key=lambda n: (n != first.metric, n))
    if not names:
        return "fold-wise test not shown: the launches share no fold metric"
    tests = {n: [None] + [corrected_t(s.scores[n] - first.scores[n], first.sizes) for s in cv[1:]] for n in names}
    return FoldComparison(cv, tests)


def fold_rows(result: FoldComparison, name: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one fold metric: each experiment's fold mean +- sd and its test against the first."""
    header = ["experiment", "launch", "folds", "pooled images", f"{name} mean +- sd", "diff [95% CI]", "t", "df", "p"]
    rows = []
    for entry, test in zip(result.entries, result.tests[name]):
        values = entry.scores[name]
        cells = [entry.experiment, entry.run_id[:8], str(entry.folds), str(entry.sizes.pool)]
        cells.append(f"{values.mean():.3f} +- {values.std(ddof=1):.3f}")
        if test is None:
            cells += ["-"] * 4
        elif test.constant:
            cells += [f"{test.mean:+.3f} on every fold", "-", str(test.df), "-"]
        else:
            cells += [
                f"{test.mean:+.3f} [{test.low:+.3f}, {test.high:+.3f}]",
                f"{test.t:.2f}",
                str(test.df),
                f"{test.p:.3f}",
            ]
        rows.append(cells)
    return header, rows


# The fold scores of a launch without nesting are those of the trial and epoch that maximised their
# mean: a maximum over trials x epochs, biased upwards, the more so the more the space searched.
OPTIMISM = (
    "optimistic: these fold scores chose the winner (they are the scores of the trial and epoch that maximised "
    "the fold mean), so each is biased upwards, the more so for the space that searched more; the test assumes "
    "a fixed learner: read it as a comparison of the searches' best fold scores, not of held-out performance"
)


def method(result: FoldComparison) -> str:
    """What the fold-wise tests rest on, and why their scores are optimistic (:data:`OPTIMISM`), unless they
    are a nested launch's outer folds, scored on images their searches never saw."""
    first = result.entries[0]
    if first.nested:
        return (
            f"fold-wise: each experiment's outer-fold winners scored on the same {first.folds} outer folds of all "
            f"{first.sizes.pool} images (outer_folds_digest {first.digest}; {_fold_sizes(first.sizes)}); each fold's "
            "search ran on the other folds' images, so these scores chose nothing; diff: against "
            f"{first.experiment}, fold by fold, corrected resampled t-test (Nadeau and Bengio 2003; n_test/n_train "
            f"{first.sizes.ratio:.3f}), 95% interval"
        )
    return (
        f"fold-wise: each experiment's winner scored on the same {first.folds} folds of {first.sizes.pool} "
        f"pooled train+val images (cv_folds_digest {first.digest}; {_fold_sizes(first.sizes)}); diff: against "
        f"{first.experiment}, fold by fold, corrected resampled t-test (Nadeau and Bengio 2003; n_test/n_train "
        f"{first.sizes.ratio:.3f}), 95% interval. {OPTIMISM}"
    )


def _fold_sizes(sizes: FoldSizes) -> str:
    """The folds' sizes as they were: ``20 scored vs 80 training images per fold``, or each fold's when they differ."""
    if len(set(sizes.held_out)) == 1:
        held = sizes.held_out[0]
        return f"{held} scored vs {sizes.pool - held} training images per fold"
    return "scored images per fold " + ", ".join(str(h) for h in sizes.held_out) + f" (of {sizes.pool})"
