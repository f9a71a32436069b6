"""Driver-side Tune callback: one MLflow child run per trial, under the launch's parent run.

All MLflow writes happen in the driver (one writer, so sqlite never sees concurrent trials). A
trial stopped by ASHA is a run too: it ends FINISHED with ``status=stopped``, ``stopped_early=true``
and the epoch it reached (``status=early_stopped`` when the task's own patience ended it). A trial
that raises ends FAILED with its error message in the ``error`` tag. Each run carries its per-epoch
history and, as ``best/<metric>`` and ``best/epoch``, its best objective so far and the epoch it came
from (the value the leaderboard ranks by), so the UI can sort trials by them.

Writes go through ``trainables.spool.PendingWrites``, a queue sent in order on every callback and kept
in the spool while the store is away. The end of the search waits up to ``outage_s`` for the store;
what it could not send stays in the spool, which ``--resume`` sends first. On resume the callback
re-attaches runs by their ``ray_trial_id`` tag, so no trial gets a second run.

A trial resumed from a checkpoint older than its last report (``--resume`` after a kill, or a retry
after a failure; ``checkpoint_policy``) re-trains the epochs after that checkpoint and reports them
again: an epoch the run already has is not logged again (each run's latest ``epoch`` is read from the
store), and the run is tagged ``resumed_from_epoch``.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

from ray import tune

from medtune.tracking.provenance import run_name
from medtune.tracking.redact import redact_uri
from medtune.tracking.store import PARENT_TAG, TRIAL_TAG
from trainables.sampling import flat_config
from trainables.spool import PendingWrites, pending_writes, spool_file

# The spool's names stay importable from here, where the driver imported them before the spool had its module.
__all__ = ["MLflowTrials", "PendingWrites", "full_uri", "pending_writes", "spool_file", "use_tracking_uri"]

ERROR_TAG_LIMIT = 4000  # MLflow tag values are capped (8000 chars in sqlite); keep the tail
OUTAGE_S = 300.0  # how long a finished search waits for a store that stopped answering ("a few minutes")
NODE_TAGS = ("node_id", "node_ip", "hostname")
# This process's tracking URIs with their credentials, by their redacted form: what a trial logger holds
# (``MLflowTrials.tracking_uri``) and Ray pickles into ``tuner.pkl``. Filled by ``use_tracking_uri``.
_FULL_URIS: dict[str, str] = {}


def use_tracking_uri(uri: str) -> str:
    """Remember ``uri`` (credentials included) for this process; its redacted form, which loggers hold.

    Ray pickles the trial logger into ``tuner.pkl`` under the storage path (a shared bucket, perhaps): the
    logger keeps only ``redact_uri(uri)`` and finds the full URI here when it first writes. A driver that
    restores a search (``--resume``) calls this with the URI of its own options before the search runs.
    """
    _FULL_URIS[redact_uri(uri)] = uri
    return redact_uri(uri)


def full_uri(redacted: str) -> str:
    """The URI ``use_tracking_uri`` remembered for ``redacted``; ``redacted`` itself when none was (a store
    whose credentials come from the environment, e.g. ``MLFLOW_TRACKING_PASSWORD``)."""
    return _FULL_URIS.get(redacted, redacted)


class MLflowTrials(tune.Callback):
    """Log every trial to MLflow as a child of ``parent_run_id``.

    Args:
        tracking_uri: absolute MLflow tracking URI; the logger holds (and Ray pickles) it without its
            credentials, the full one kept in this process (``use_tracking_uri``).
        experiment_id: the experiment, created by the driver before trials start.
        parent_run_id: the launch's parent run.
        max_epochs: the epoch budget, to tell ASHA-stopped trials from complete ones.
        searched: names of searched parameters (used for readable run names).
        tags: extra tags for every child run (e.g. the segmenter version).
        metric: the search's objective, whose best epoch is logged as ``best/<metric>`` ("" for none).
        mode: ``max`` or ``min``, for ``metric``.
        spool: the file unsent writes are kept in (``spool_file``); None keeps them in memory only.
        outage_s: how long the end of a finished search waits for a store that does not answer.
    """

    # Class-level defaults: a callback pickled by an older version (restored by --resume) lacks them.
    metric, mode, spool, outage_s = "", "max", None, OUTAGE_S

    def __init__(
        self,
        *,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        max_epochs: int,
        searched: list[str],
        tags: dict[str, str] | None = None,
        metric: str = "",
        mode: str = "max",
        spool: Path | None = None,
        outage_s: float = OUTAGE_S,
    ) -> None:
        self.tracking_uri = use_tracking_uri(tracking_uri)  # redacted: no password in tuner.pkl
        self.experiment_id, self.parent_run_id = experiment_id, parent_run_id
        self.max_epochs, self.searched, self.tags = max_epochs, searched, dict(tags or {})
        self.metric, self.mode, self.spool, self.outage_s = metric, mode, spool, outage_s
        self._writes: PendingWrites | None = None
        self._started: set[str] = set()  # trials whose start is queued in this process

    def __getstate__(self) -> dict:  # the Tuner pickles its callbacks: the arguments only, never the client
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({k: v for k, v in state.items() if not k.startswith("_")})
        self._writes, self._started = None, set()

    @property
    def writes(self) -> PendingWrites:
        """The queue, with what a previous process of this launch left in the spool first."""
        if self._writes is None:
            ids = {"experiment_id": self.experiment_id, "parent_run_id": self.parent_run_id}
            self._writes = PendingWrites(
                tracking_uri=full_uri(self.tracking_uri), **ids, metric=self.metric, mode=self.mode, spool=self.spool
            )
        return self._writes

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._start(trial)
        self.writes.flush()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        step = int(result.get("training_iteration", 0))
        ts = int(result.get("timestamp", 0) * 1000)  # fixed per result: a resent point is the same point
        metrics = [
            [key, float(value), ts, step]
            for key, value in result.items()
            if "/" in key and isinstance(value, (int, float)) and not isinstance(value, bool)
        ]
        metrics = [m for m in metrics + [["epoch", float(step), ts, step]] if math.isfinite(m[1])]
        tags = {k: str(result.get(k, "")) for k in NODE_TAGS}
        if result.get("start_epoch"):  # this fit continued from a checkpoint of that epoch
            tags["resumed_from_epoch"] = str(int(result["start_epoch"]))
        self._start(trial)
        self.writes.log(trial.trial_id, step=step, metrics=metrics, tags=tags)
        self.writes.flush()

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
        """Send every pending write (waiting up to ``outage_s`` once every trial ended), then retire lost runs.

        A trial started after Ray's last experiment snapshot and before a SIGKILL is unknown to the
        restored search, which samples its configuration again under a new trial id. Its run would
        be a duplicate left RUNNING forever: it is marked KILLED, tagged ``status=lost`` and deleted
        (MLflow keeps deleted runs restorable). What cannot be sent stays in the spool for --resume.
        """
        finished = all(t.status in ("TERMINATED", "ERROR") for t in trials)  # not an interrupted search
        deadline = time.monotonic() + (self.outage_s if finished else 0.0)
        writes = self.writes
        if not writes.flush() and finished and not writes.kept:
            wait = f"waiting up to {self.outage_s:.0f} s for the tracking store ({len(writes)} writes queued)"
            print(f"[launch] every trial ended; {wait}", file=sys.stderr)
        if writes.drain(deadline):
            known = {t.trial_id for t in trials}
            for trial_id in [t for t in writes.runs if t not in known]:
                writes.retire(trial_id)
            writes.drain(deadline)

    def _start(self, trial: Any) -> None:
        """Queue the trial's run (created, or re-opened after --resume) once per process."""
        if trial.trial_id in self._started:
            return
        self._started.add(trial.trial_id)
        config = flat_config(trial.config)
        tags = {PARENT_TAG: self.parent_run_id, TRIAL_TAG: trial.trial_id, "trial_dir": str(trial.path or "")}
        self.writes.start(
            trial.trial_id,
            name=run_name(config, self.searched, trial.trial_id),
            tags={**tags, **self.tags},
            params={k: str(v)[:6000] for k, v in sorted(config.items())},
        )

    def _end(self, trial: Any, tags: dict[str, str], status: str) -> None:
        self._start(trial)
        self.writes.end(trial.trial_id, tags=tags, status=status)
        self.writes.flush()


def _error_text(trial: Any) -> str:
    """The last meaningful line of the trial's error (the exception message), then the tail."""
    path = trial.error_file
    text = Path(path).read_text(errors="replace") if path and Path(path).is_file() else "unknown error"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "unknown error"
    return f"{last}\n{text[-ERROR_TAG_LIMIT:]}" if len(text) > len(last) else last
