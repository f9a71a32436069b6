"""The verdicts of ``--compare``: what each difference between experiments says, in words.

The verdict is the primary metric's: the test counterpart of the search's objective (``val/balanced_acc``
-> ``balanced_acc``), the question the searches were run to answer. The other metrics are listed as
secondary: with several of them, one can differ by chance (multiplicity). A cross-validated launch is
tested as the ensemble of its K fold models; against a single model (or its seeds) a difference would
mix the spaces with the ensembling, so the test-split verdict is refused and the reason said. The
fold-wise corrected t-tests (``medtune.report.cv``) are said in words the same way.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from medtune.report import cv
from medtune.scoring.bootstrap import CONCLUSIVE_HALF_WIDTH, Interval

if TYPE_CHECKING:  # types only: medtune.report.compare imports this module to write its verdicts
    from medtune.report.compare import Comparison, Entry


def _estimator(entry: Entry) -> str:
    """What produced an entry's test predictions: ``the ensemble of 5 fold models`` or ``one model per seed``."""
    return f"the ensemble of {entry.fold_models} fold models" if entry.fold_models else "one model per seed"


def not_alike(entry: Entry, first: Entry) -> str:
    """Why the test-split difference of ``entry`` against ``first`` would mislead, or "" when both are alike.

    A K-model fold ensemble against a single model (or an ensemble of another size) differs by the
    ensembling as well as by the configuration: the difference cannot be put on the search.
    """
    if entry.fold_models == first.fold_models:
        return ""
    return (
        f"no verdict: {entry.experiment} is {_estimator(entry)} and {first.experiment} {_estimator(first)}; "
        "the difference mixes the searches with the ensembling (compare launches cross-validated with the "
        "same folds, or neither)"
    )


def primary(result: Comparison) -> str:
    """The metric the verdict is on: the test counterpart of the first experiment's objective ("" if none)."""
    name = result.entries[0].objective.split("/")[-1]
    return name if name in result.diffs else ""


def verdict(better: str, worse: str, diff: Interval, *, remedy: str = "more seeds or test images") -> str:
    """What a difference ``better - worse`` and its interval say, in words.

    Args:
        better: the experiment the difference favours when positive.
        worse: the experiment it is measured against.
        diff: the difference ``better - worse`` with its 95% interval.
        remedy: what would narrow a too-wide interval.
    """
    if not (math.isfinite(diff.low) and math.isfinite(diff.high)):
        return "no interval (the metric is undefined on the resampled images)"
    if diff.low > 0:
        return f"{better} is better"
    if diff.high < 0:
        return f"{worse} is better"
    said = "no difference shown (the interval includes 0)"
    half = (diff.high - diff.low) / 2
    if half > CONCLUSIVE_HALF_WIDTH:
        said += f"; too wide to conclude (half-width {half:.3f} > {CONCLUSIVE_HALF_WIDTH}): {remedy}"
    return said


def verdicts(result: Comparison) -> list[str]:
    """The primary metric's line per experiment after the first, then the secondary metrics' lines.

    Each line is the difference against the first experiment and what it says (:func:`verdict`), or,
    when the two are not the same kind of estimator (:func:`not_alike`), why no verdict is drawn.
    """
    first, head = result.entries[0], primary(result)
    objectives = sorted({e.objective for e in result.entries})
    if head:
        said = f"primary metric: {head}, the test counterpart of the search's objective {first.objective}"
        if len(objectives) > 1:
            said += f" (the experiments' objectives differ: {', '.join(o or '?' for o in objectives)}; the first's)"
    else:
        said = f"no primary metric: the objective {first.objective or '?'} has no test counterpart here"
    lines = [said, *(_pair_lines(result, head, "primary") if head else [])]
    secondary = [name for name in result.diffs if name != head]
    if secondary:
        lines.append(_MULTIPLICITY.format(count=len(secondary)))
    for name in secondary:
        lines += _pair_lines(result, name, "secondary")
    return lines


def _pair_lines(result: Comparison, name: str, rank: str) -> list[str]:
    """``rank: b vs a, name: diff [95% CI]: what it says`` for each experiment after the first."""
    first, lines, said_why = result.entries[0], [], rank == "primary" or not primary(result)
    for i, entry in enumerate(result.entries[1:], start=1):
        diff = result.diffs[name][i]
        why = not_alike(entry, first)
        if why and not said_why:  # the primary line said why in full
            why = "no verdict (not the same kind of estimator: see the primary metric's line)"
        words = why or verdict(entry.experiment, first.experiment, diff)
        lines.append(f"{rank}: {entry.experiment} vs {first.experiment}, {name}: {diff}: {words}")
    return lines


# One sentence on multiplicity: several metrics tested at 95% each will, by chance, show a difference
# more often than one in twenty times; only the primary metric was the question asked.
_MULTIPLICITY = (
    "secondary metrics ({count}): described, not the question asked; with several metrics at 95% each, one of "
    "them can show a difference by chance (no correction for multiplicity), so the verdict is the primary metric's"
)


def fold_verdicts(result: cv.FoldComparison) -> list[str]:
    """One line per experiment after the first and per fold metric: the corrected t-test and what it says."""
    first, lines = result.entries[0].experiment, []
    for name, tests in result.tests.items():
        for entry, test in zip(result.entries[1:], tests[1:]):
            # ``verdict`` reads a positive difference (entry - first) as favouring its first argument.
            lower = result.lower_is_better(name)
            better, worse = (first, entry.experiment) if lower else (entry.experiment, first)
            if not test.constant:
                diff = Interval(test.mean, test.low, test.high)
                said = verdict(better, worse, diff, remedy="more folds, repeated cross-validation or more images")
            elif test.mean == 0:
                said = "no difference on any fold (every difference is 0; no t-test)"
            else:
                said = f"{better if test.mean > 0 else worse} is better on every fold by the same margin (no t-test)"
            lines.append(f"{entry.experiment} vs {first}, fold-wise {name}: {test}: {said}")
    return lines
