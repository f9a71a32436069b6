"""Read one launch from MLflow into plain values: the parent run, its trials and their curves.

Nothing past this module touches MLflow objects, so plots and pages are plain functions of a
:class:`Launch`. Only the tracking store is read (no Ray results, no checkpoints, no dataset).

"The latest launch" of an experiment (:func:`latest`) is its latest full search: a ``--smoke`` launch
(a check that the pipeline runs, at a toy budget) or a ``--config`` launch (one configuration
trained once, no search) started after it does not replace it. Those are read when asked for by
``--launch``, or when the experiment has nothing else (and then the report says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import yaml
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from medtune.config.spaces import merge
from medtune.report import nested
from medtune.report.cv import FoldScores, read_fold_scores
from medtune.tracking.leaderboard import Row, leaderboard
from medtune.tracking.store import LAUNCH_TAG, TrackingError, experiment_id, read_arrays, read_artifact, trial_runs

PREDICTIONS = "test_predictions.npz"  # logged on the parent run by src/medtune/publish.py
SPACE_FILE = "search_space.yaml"  # the space file as launched (its smoke block not yet merged)


@dataclass
class Launch:
    """One launch of a search, read from its parent run and child (trial) runs.

    Attributes:
        experiment: the MLflow experiment name.
        run_id: the parent run's id.
        tags, params, metrics: the parent run's tags, params (``metric``, ``mode``, ``budget.*``)
            and metrics (``test/*`` of the best trial, ``best_<metric>``).
        rows: one per trial, best first, failed last (``medtune.tracking.leaderboard`` order).
        started: trial run id -> start time in ms (the order the search sampled them).
        curves: trial run id -> ``(epoch, objective)`` for every epoch the trial reported.
        space: the search-space mapping as launched (smoke block merged); ``{}`` if not logged.
        predictions: the best trial's per-image test predictions, or None if not logged.
        folds: a cross-validated launch's fold scores (``medtune.report.cv``), a line saying why
            they cannot be read, or None for a launch without cross-validation.
        selection: a line on why this launch was read rather than a newer one (:func:`latest`).
    """

    experiment: str
    run_id: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    rows: list[Row]
    started: dict[str, int]
    curves: dict[str, list[tuple[int, float]]]
    space: dict
    predictions: dict[str, np.ndarray] | None
    folds: FoldScores | str | None = None
    selection: str = ""  # why this launch and not the newest one ("" when it is the newest, or asked for)
    nested: tuple[str, ...] = ()  # a nested launch's result in words (this Launch is then its refit's search)

    @property
    def metric(self) -> str:
        return self.params.get("metric", "")

    @property
    def mode(self) -> str:
        return self.params.get("mode", "max")

    @property
    def task(self) -> str:
        return self.tags.get("task", "")

    @property
    def max_epochs(self) -> int:
        return int(float(self.params.get("budget.max_epochs", 0)))

    @property
    def test(self) -> dict[str, float]:
        """The best trial's test-split metrics, as logged on the parent run."""
        return {k: v for k, v in sorted(self.metrics.items()) if k.startswith("test/")}

    @property
    def best(self) -> Row | None:
        """The trial the launch tested and published (``best_run_id``), else the leaderboard's first."""
        chosen = self.tags.get("best_run_id")
        for row in self.rows:
            if row.run_id == chosen:
                return row
        first = self.rows[0] if self.rows else None
        return first if first is not None and not math.isnan(first.objective) else None

    def in_start_order(self) -> list[Row]:
        """The trials in the order they started (the order the sampler proposed them)."""
        return sorted(self.rows, key=lambda r: self.started.get(r.run_id, 0))


def open_launch(client: MlflowClient, experiment: str, launch: str | None = None) -> Launch:
    """Read a launch of ``experiment``: the latest one, or the parent run ``launch``.

    Raises:
        TrackingError: unknown experiment (the message lists the existing ones), no launch yet,
            or ``launch`` is not a launch of this experiment.
    """
    exp_id = experiment_id(client, experiment, create=False)
    parent, selection = _parent(client, exp_id, experiment, launch)
    if nested.is_nested(parent):  # the nested result, then its refit's search (none with --no-refit)
        lines = tuple(nested.summary(client, parent))
        refit = nested.refit_run(client, parent)
        if refit is None:
            return Launch(
                experiment,
                parent.info.run_id,
                dict(parent.data.tags),
                dict(parent.data.params),
                {},
                [],
                {},
                {},
                {},
                None,
                None,
                selection,
                lines,
            )
        return replace(_read(client, experiment, exp_id, refit, selection), nested=lines)
    return _read(client, experiment, exp_id, parent, selection)


def _read(client: MlflowClient, experiment: str, exp_id: str, parent: Run, selection: str) -> Launch:
    """The launch whose parent run is ``parent``: its trials, curves, space, predictions and folds."""
    run_id, params = parent.info.run_id, dict(parent.data.params)
    metric, mode = params.get("metric", ""), params.get("mode", "max")
    rows = leaderboard(client, exp_id, run_id, metric, mode)
    started = {r.info.run_id: r.info.start_time or 0 for r in trial_runs(client, exp_id, run_id)}
    return Launch(
        experiment=experiment,
        run_id=run_id,
        tags=dict(parent.data.tags),
        params=params,
        metrics=dict(parent.data.metrics),
        rows=rows,
        started=started,
        curves={row.run_id: _curve(client, row.run_id, metric) for row in rows},
        space=_space(client, run_id, smoke=parent.data.tags.get("smoke") == "true"),
        predictions=load_predictions(client, run_id),
        folds=read_fold_scores(client, experiment, parent),
        selection=selection,
    )


def _parent(client: MlflowClient, exp_id: str, experiment: str, launch: str | None) -> tuple[Run, str]:
    if launch is None:
        return latest(client, exp_id, experiment)
    try:
        run = client.get_run(launch)
    except MlflowException:
        raise TrackingError(f"--launch {launch}: no such run in the tracking store") from None
    if run.info.experiment_id != exp_id or run.data.tags.get(LAUNCH_TAG) != "true":
        raise TrackingError(f"--launch {launch}: not a launch (parent run) of experiment '{experiment}'")
    return run, ""


def launch_kind(client: MlflowClient, run: Run) -> str:
    """``smoke`` (``--smoke``), ``config`` (``--config``: one configuration, no search) or ``""`` for a search.

    A ``--config`` launch logged its config file as the space file: a mapping with ``space`` and ``config``.
    """
    tags = run.data.tags
    if tags.get("smoke") == "true":
        return "smoke"
    if tags.get("config") == "true":
        return "config"
    data = read_artifact(client, run.info.run_id, SPACE_FILE)
    try:
        raw = yaml.safe_load(data.decode()) if data is not None else None
    except (yaml.YAMLError, UnicodeDecodeError):
        raw = None
    return "config" if isinstance(raw, dict) and {"space", "config"} <= set(raw) else ""


def latest(client: MlflowClient, exp_id: str, experiment: str) -> tuple[Run, str]:
    """The latest launch that is a full search, and a line saying which newer launches it skipped.

    ``--smoke`` and ``--config`` launches are skipped (module docstring); when the experiment has
    only those, the latest of them is read and the line says so.

    Raises:
        TrackingError: the experiment has no launch.
    """
    runs = client.search_runs(
        [exp_id], filter_string=f"tags.`{LAUNCH_TAG}` = 'true'", order_by=["attributes.start_time DESC"]
    )
    if not runs:
        raise TrackingError(f"experiment {exp_id} has no launch yet (run launch.py first)")
    kinds = []
    for run in runs:
        kind = launch_kind(client, run)
        if not kind:
            if not kinds:
                return run, ""
            skipped = ", ".join(f"{r.info.run_id[:8]} (--{k})" for r, k in zip(runs, kinds))
            return run, (
                f"'{experiment}': latest full search {run.info.run_id[:8]}; newer launches skipped: {skipped} "
                "(read one with --experiment ... --launch RUN_ID)"
            )
        kinds.append(kind)
    return runs[0], (
        f"'{experiment}' has no full search, only --smoke/--config launches: reading the latest, "
        f"{runs[0].info.run_id[:8]} (--{kinds[0]})"
    )


def _curve(client: MlflowClient, run_id: str, metric: str) -> list[tuple[int, float]]:
    history = client.get_metric_history(run_id, metric) if metric else []
    return sorted((int(m.step), float(m.value)) for m in history if math.isfinite(m.value))


def load_predictions(client: MlflowClient, run_id: str) -> dict[str, np.ndarray] | None:
    """The arrays of a parent run's ``test_predictions.npz``, or None if it was not logged."""
    return read_arrays(client, run_id, PREDICTIONS)


def _space(client: MlflowClient, run_id: str, *, smoke: bool) -> dict:
    """The search space as the launch used it: the logged YAML with its smoke block merged."""
    data = read_artifact(client, run_id, SPACE_FILE)
    if data is None:
        return {}
    try:
        raw = yaml.safe_load(data.decode())
    except (yaml.YAMLError, UnicodeDecodeError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return merge(raw, raw.get("smoke") or {}) if smoke else raw
