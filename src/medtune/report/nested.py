"""Nested launches in reports and comparisons (``launch.py --outer-folds K``; ``medtune.publish.nested``).

A nested launch's run holds every image's out-of-sample prediction (``outer_predictions.npz``) and
each outer fold's winner's test scores on its own held-out images (``outer/fold<k>/test/<name>``,
with ``outer_folds.json`` saying which images each fold held out). ``analyze.py --compare`` of two
nested launches on the same outer folds (same ``outer_folds_digest``) pairs all N images in the
bootstrap and runs the corrected resampled t-test on the outer folds' scores; unlike an ordinary
cross-validated launch's fold scores, these chose nothing (each fold's search never saw its images).
A nested launch against an ordinary one, or nested launches on other outer folds, are refused: their
numbers rest on other images and describe other things (a procedure vs one model).
"""

from __future__ import annotations

import re

import numpy as np
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from medtune.publish.nested import DIGEST_TAG, NESTED_TAG, PREDICTIONS, STAGE_TAG, TEXT
from medtune.report.cv import FoldScores, FoldsError, parse_sizes
from medtune.tracking.store import TrackingError, read_arrays, read_artifact, trial_runs

OUTER_FILE = "outer_folds.json"
OUTER_METRIC = re.compile(r"^outer/fold(\d+)/(test/.+)$")


def is_nested(run: Run) -> bool:
    return bool(run.data.tags.get(NESTED_TAG))


def predictions(client: MlflowClient, run: Run) -> dict[str, np.ndarray] | None:
    """The pooled ``outer_predictions.npz`` of a nested launch, or None when its outer folds did not all finish."""
    return read_arrays(client, run.info.run_id, PREDICTIONS)


def outer_scores(client: MlflowClient, experiment: str, run: Run) -> FoldScores | str:
    """The outer folds' test scores as :class:`FoldScores` (``nested``: they chose nothing), or why unreadable."""
    where = f"nested launch {run.info.run_id[:8]} of '{experiment}'"
    data = read_artifact(client, run.info.run_id, OUTER_FILE)
    if data is None:  # parse_sizes would name the ordinary launch's folds.json
        return f"{where} has no {OUTER_FILE} (the launch stopped before logging its outer folds)"
    try:
        sizes = parse_sizes(data, where)
    except FoldsError as err:
        return str(err)
    k = len(sizes.held_out)
    by_name: dict[str, dict[int, float]] = {}
    for key, value in run.data.metrics.items():
        if match := OUTER_METRIC.match(key):
            by_name.setdefault(match[2], {})[int(match[1])] = value
    scores = {n: np.array([v[i] for i in range(k)]) for n, v in by_name.items() if set(range(k)) <= set(v)}
    scores = {n: values for n, values in scores.items() if np.isfinite(values).all()}
    objective = "test/" + run.data.params.get("metric", "").split("/", 1)[-1]
    digest = run.data.tags.get(DIGEST_TAG, "")
    mode = run.data.params.get("mode", "max")
    return FoldScores(experiment, run.info.run_id, digest, sizes, scores, objective, mode, nested=True)


def check_alike(client: MlflowClient, runs: list[tuple[str, Run]]) -> None:
    """Refuse (``TrackingError``, one line) a nested launch beside an ordinary one, or other outer folds."""
    nested = [name for name, run in runs if is_nested(run)]
    if not nested:
        return
    if len(nested) < len(runs):
        plain = [name for name, run in runs if not is_nested(run)]
        raise TrackingError(
            f"cannot compare: {', '.join(nested)} {'is' if len(nested) == 1 else 'are'} nested (every image predicted "
            f"out of sample, a procedure's estimate) and {', '.join(plain)} not (one model on its test split): "
            "compare nested launches with nested launches on the same --outer-folds and --seed"
        )
    digests = {run.data.tags.get(DIGEST_TAG) for _, run in runs}
    if len(digests) > 1:
        which = ", ".join(f"{name}: {run.data.tags.get(DIGEST_TAG)}" for name, run in runs)
        raise TrackingError(
            f"cannot compare: the nested launches used different outer folds ({which}); "
            "launch them with the same --outer-folds, --seed and data"
        )
    for name, run in runs:
        if read_artifact(client, run.info.run_id, PREDICTIONS) is None:
            raise TrackingError(f"cannot compare: the nested launch of '{name}' has not finished its outer folds")


def summary(client: MlflowClient, run: Run) -> list[str]:
    """The nested result's lines as the launch printed them (``nested.md``), or why there are none yet."""
    data = read_artifact(client, run.info.run_id, TEXT)
    if data is None:
        return [f"nested launch {run.info.run_id}: its outer folds have not all finished (run launch.py --resume)"]
    return data.decode().rstrip("\n").splitlines()


def refit_run(client: MlflowClient, run: Run) -> Run | None:
    """The nested launch's refit run (the search on the dataset's own splits), if it has one."""
    children = trial_runs(client, run.info.experiment_id, run.info.run_id)
    refits = [r for r in children if r.data.tags.get(STAGE_TAG) == "refit"]
    return max(refits, key=lambda r: r.info.start_time, default=None)
