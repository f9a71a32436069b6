"""Driver-side Tune callback: one MLflow child run per trial, under the launch's parent run.

All MLflow writes happen in the driver (one writer, so sqlite never sees concurrent trials). A
trial stopped by ASHA is a run too: it ends FINISHED with ``status=stopped``, ``stopped_early=true``
and the epoch it reached (``status=early_stopped`` when the task's own patience ended it). A trial that raises ends FAILED with its error message in the ``error`` tag. On resume the
callback re-attaches runs by their ``ray_trial_id`` tag, so no trial gets a second run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray import tune

from medtune.tracking import PARENT_TAG, TRIAL_TAG, open_client, retrying, run_name
from trainables.sampling import flat_config

ERROR_TAG_LIMIT = 4000  # MLflow tag values are capped (8000 chars in sqlite); keep the tail


class MLflowTrials(tune.Callback):
    """Log every trial to MLflow as a child of ``parent_run_id``.

    Args:
        tracking_uri: absolute MLflow tracking URI.
        experiment_id: the experiment, created by the driver before trials start.
        parent_run_id: the launch's parent run.
        max_epochs: the epoch budget, to tell ASHA-stopped trials from complete ones.
        searched: names of searched parameters (used for readable run names).
        tags: extra tags for every child run (e.g. the segmenter version).
    """

    def __init__(
        self,
        *,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        max_epochs: int,
        searched: list[str],
        tags: dict[str, str] | None = None,
    ) -> None:
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.max_epochs, self.searched, self.tags = max_epochs, searched, dict(tags or {})
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}  # Ray trial id -> MLflow run id

    def __getstate__(self) -> dict:  # the Tuner pickles its callbacks; never the client
        return {**self.__dict__, "_client": None, "_runs": {}}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = open_client(self.tracking_uri)
            self._reattach()
        return self._client

    def _reattach(self) -> None:
        runs = self._client.search_runs(
            [self.experiment_id], filter_string=f"tags.{PARENT_TAG} = '{self.parent_run_id}'", max_results=10000
        )
        self._runs = {r.data.tags[TRIAL_TAG]: r.info.run_id for r in runs if TRIAL_TAG in r.data.tags}

    def _run_id(self, trial: Any) -> str:
        _ = self.client  # connects and re-attaches existing runs on first use
        if trial.trial_id not in self._runs:
            self._start(trial)
        return self._runs[trial.trial_id]

    def _start(self, trial: Any) -> None:
        config = flat_config(trial.config)
        tags = {
            PARENT_TAG: self.parent_run_id,
            TRIAL_TAG: trial.trial_id,
            "trial_dir": str(trial.path or ""),
            **self.tags,
        }
        run = self.client.create_run(
            self.experiment_id, run_name=run_name(config, self.searched, trial.trial_id), tags=tags
        )
        params = [Param(k, str(v)[:6000]) for k, v in sorted(config.items())]
        self.client.log_batch(run.info.run_id, params=params)
        self._runs[trial.trial_id] = run.info.run_id

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _ = self.client  # connects and re-attaches existing runs on first use
        resumed = trial.trial_id in self._runs
        run_id = self._run_id(trial)
        if resumed:  # a trial continuing after --resume: its run was closed as KILLED
            self.client.update_run(run_id, "RUNNING")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        step = int(result.get("training_iteration", 0))
        ts = int(result.get("timestamp", 0) * 1000)
        metrics = [
            Metric(key, float(value), ts, step)
            for key, value in result.items()
            if "/" in key and isinstance(value, (int, float)) and not isinstance(value, bool)
        ]
        metrics.append(Metric("epoch", float(step), ts, step))
        tags = [RunTag(k, str(result.get(k, ""))) for k in ("node_id", "node_ip", "hostname")]
        run_id, kept = self._run_id(trial), [m for m in metrics if math.isfinite(m.value)]
        # A write refused by a locked sqlite file or a store answering 503 is retried, not lost.
        retrying(lambda: self.client.log_batch(run_id, metrics=kept, tags=tags))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result
        epochs = int(last.get("training_iteration", 0))
        patience = bool(last.get("early_stopped"))
        by_asha = epochs < self.max_epochs and not patience
        status = "stopped" if by_asha else "early_stopped" if patience else "completed"
        tags = {"epochs_run": str(epochs), "stopped_early": str(by_asha).lower(), "status": status}
        self._end(trial, tags, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        epochs = int((trial.last_result or {}).get("training_iteration", 0))
        tags = {"epochs_run": str(epochs), "stopped_early": "false", "status": "failed", "error": _error_text(trial)}
        self._end(trial, tags, "FAILED")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Retire runs of trials Ray no longer knows.

        A trial started after Ray's last experiment snapshot and before a SIGKILL is unknown to the
        restored search, which samples its configuration again under a new trial id. Its run would
        be a duplicate left RUNNING forever: it is marked KILLED, tagged ``status=lost`` and deleted
        (MLflow keeps deleted runs restorable).
        """
        _ = self.client  # re-attaches runs when no trial started in this session
        known = {t.trial_id for t in trials}
        for trial_id, run_id in self._runs.items():
            if trial_id not in known:
                self.client.set_tag(run_id, "status", "lost")
                self.client.set_terminated(run_id, "KILLED")
                self.client.delete_run(run_id)

    def _end(self, trial: Any, tags: dict[str, str], status: str) -> None:
        run_id = self._run_id(trial)
        retrying(lambda: self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()]))
        retrying(lambda: self.client.set_terminated(run_id, status))


def _error_text(trial: Any) -> str:
    """The last meaningful line of the trial's error (the exception message), then the tail."""
    path = trial.error_file
    text = Path(path).read_text(errors="replace") if path and Path(path).is_file() else "unknown error"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "unknown error"
    return f"{last}\n{text[-ERROR_TAG_LIMIT:]}" if len(text) > len(last) else last
