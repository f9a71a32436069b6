"""Compare experiments: the best trial of each one's latest launch on the same test split.

Every experiment's launch must be on the same dataset (same ``dataset_fingerprint``) and have logged
its per-image test predictions (``test_predictions.npz``); the metrics are re-computed from them and
each difference against the first experiment gets a two-level bootstrap interval
(``medtune.scoring.bootstrap``): the same images drawn for every experiment in each resample
(paired), each experiment's seeds drawn on their own. A launch with ``--repeats R`` saved the
predictions of its R training runs (``probs_seeds``); one without them counts as one seed. Each
difference is then said in words: which experiment is better, or that none is shown.

When every launch is cross-validated on the same folds (same ``cv_folds_digest``), their winners'
scores on each fold's held-out images are compared too, fold by fold, with the corrected resampled
t-test (``medtune.report.cv``), next to the bootstrap on the test split; those scores chose the
winners, and the output says they are optimistic.

The verdict is the primary metric's: the test counterpart of the search's objective (``val/balanced_acc``
-> ``balanced_acc``), the question the searches were run to answer. The other metrics are listed as
secondary: with several of them, one can differ by chance. A cross-validated launch is tested as the
ensemble of its K fold models; against a single model (or its seeds) a difference would mix the
spaces with the ensembling, so the test-split verdict is refused and the reason said.

This module computes; ``medtune.report.compare_page`` shows (the text, the forest plot, the page).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from medtune.report import cv, nested
from medtune.report.load import PREDICTIONS, latest, load_predictions
from medtune.scoring.bootstrap import METRICS, RESAMPLES, SEED, Interval, seed_bootstrap
from medtune.tracking.store import TrackingError, experiment_id

SALIENCY = "test/saliency_iou"  # logged by saliency-trained classifiers; shown when present


class CompareError(TrackingError):
    """Experiments that cannot be compared; the message is one line."""


@dataclass
class Entry:
    """One experiment's latest launch and its best trial's test predictions."""

    experiment: str
    run_id: str
    dataset: str
    fingerprint: str
    labels: np.ndarray
    probs: np.ndarray  # the search's winner [N, K]
    probs_seeds: np.ndarray  # every seed's model [R, N, K], all at the full budget (tag seed0: is 0 the winner)
    image_ids: np.ndarray | None
    saliency_iou: float  # NaN when the launch logged none
    saliency: np.ndarray | None = None  # per test image [N] (NaN without a lesion); None if not saved
    folds: cv.FoldScores | str | None = None  # cross-validated launches' fold scores, or why unreadable
    objective: str = ""  # the search's metric, e.g. ``val/balanced_acc`` (param ``metric``)
    fold_models: int = 0  # K when the test predictions are the ensemble of K fold models, else 0
    selection: str = ""  # why this launch and not a newer one (``load.latest``)
    nested: bool = False  # a nested launch: every image predicted out of sample (``medtune.report.nested``)


@dataclass
class Comparison:
    """Per metric: each experiment's value (with its bootstrap interval) and its difference vs the first."""

    entries: list[Entry]
    values: dict[str, list[Interval]]
    diffs: dict[str, list[Interval]]
    folds: cv.FoldComparison | str = ""  # the fold-wise tests, or the line saying why none ("": no CV launch)


def open_entries(client: MlflowClient, experiments: list[str]) -> list[Entry]:
    """The latest launch of each experiment; refuses different datasets or missing predictions."""
    parents = [(name, *latest(client, experiment_id(client, name, create=False), name)) for name in experiments]
    fingerprints = {run.data.tags.get("dataset_fingerprint", "?") for _, run, _ in parents}
    if len(fingerprints) > 1:
        which = "; ".join(
            f"{n}: {r.data.tags.get('dataset_fingerprint', '?')} ({r.data.tags.get('dataset', '?')})"
            for n, r, _ in parents
        )
        raise CompareError(f"cannot compare: the latest launches are on different datasets ({which})")
    try:
        nested.check_alike(client, [(name, run) for name, run, _ in parents])
    except TrackingError as err:
        raise CompareError(str(err)) from None
    return [_entry(client, name, run, selection) for name, run, selection in parents]


def _entry(client: MlflowClient, name: str, run: Run, selection: str = "") -> Entry:
    is_nested = nested.is_nested(run)
    preds = nested.predictions(client, run) if is_nested else load_predictions(client, run.info.run_id)
    kind = "" if preds is None else str(preds.get("report_kind", ""))
    if kind not in ("classification", "multilabel"):
        raise CompareError(
            f"cannot compare: the latest launch of '{name}' ({run.info.run_id}) has no per-image classification predictions ({PREDICTIONS})"
        )
    if kind == "multilabel":
        raise CompareError(f"cannot compare: '{name}' is multi-label; --compare covers single-label classifiers")
    tags = run.data.tags
    probs = preds["probs"].astype(float)
    return Entry(
        experiment=name,
        run_id=run.info.run_id,
        dataset=tags.get("dataset", "?"),
        fingerprint=tags.get("dataset_fingerprint", "?"),
        labels=preds["labels"].astype(int),
        probs=probs,
        probs_seeds=preds["probs_seeds"].astype(float) if "probs_seeds" in preds else probs[None],
        image_ids=preds.get("image_ids"),
        saliency_iou=float(run.data.metrics.get(SALIENCY, math.nan)),
        saliency=_per_image_saliency(preds, len(probs)),
        folds=nested.outer_scores(client, name, run) if is_nested else cv.read_fold_scores(client, name, run),
        objective=run.data.params.get("metric", ""),
        fold_models=0 if is_nested else _fold_models(run.data.params, preds),
        selection=selection,
        nested=is_nested,
    )


def _fold_models(params: dict[str, str], preds: dict[str, np.ndarray]) -> int:
    """K when the launch's test predictions are its K fold models' ensemble (param ``cv_folds``), else 0."""
    if params.get("cv_folds", "").isdigit():
        return int(params["cv_folds"])
    return len(preds["probs_folds"]) if "probs_folds" in preds else 0


def _per_image_saliency(preds: dict[str, np.ndarray], n: int) -> np.ndarray | None:
    """The winner's saliency IoU per test image, when saved for all of them (older launches: first 16)."""
    values = preds.get("saliency_iou")
    return values.astype(float) if values is not None and len(values) == n else None


def _mean_saliency(labels: np.ndarray, values: np.ndarray) -> float:
    """Mean saliency IoU over the drawn images that have a lesion (``values`` [N, 1]; NaN without one)."""
    finite = values[:, 0][np.isfinite(values[:, 0])]
    return float(finite.mean()) if finite.size else math.nan


def _aligned(entries: list[Entry]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Labels and each entry's probabilities [R, N, K], ordered by image id so every image is the same."""
    first, probs = entries[0], []
    order0 = np.argsort(first.image_ids) if first.image_ids is not None else np.arange(len(first.labels))
    for entry in entries:
        if entry.image_ids is None or first.image_ids is None:
            order = np.arange(len(entry.labels))
            same = len(entry.labels) == len(first.labels)
        else:
            order = np.argsort(entry.image_ids)
            same = np.array_equal(entry.image_ids[order], first.image_ids[order0])
        if not same or not np.array_equal(entry.labels[order], first.labels[order0]):
            raise CompareError(
                f"cannot compare: '{entry.experiment}' was tested on other images than '{first.experiment}'"
            )
        probs.append(entry.probs_seeds[:, order])
    return first.labels[order0], probs


def compare(entries: list[Entry], *, resamples: int = RESAMPLES, seed: int = SEED) -> Comparison:
    """Every metric of every entry over its seeds and the test images, and paired differences vs the first."""
    labels, probs = _aligned(entries)
    values, diffs = {}, {}
    for name, metric in METRICS.items():
        values[name], diffs[name] = seed_bootstrap(labels, probs, metric, resamples=resamples, seed=seed)
    if all(e.saliency is not None for e in entries):  # the winners' saliency IoU, paired over the same images
        saliency = [e.saliency[_order(e)][None, :, None] for e in entries]
        values["saliency_iou"], diffs["saliency_iou"] = seed_bootstrap(
            labels, saliency, _mean_saliency, resamples=resamples, seed=seed
        )
    folds = cv.pair([e.experiment for e in entries], [e.folds for e in entries])
    return Comparison(entries, values, diffs, folds)


def _order(entry: Entry) -> np.ndarray:
    """The image order ``_aligned`` uses: by image id when the entry has them."""
    return np.argsort(entry.image_ids) if entry.image_ids is not None else np.arange(len(entry.labels))
