"""The trial logger's queue of MLflow writes, kept on disk (the spool) while the store does not take them.

Writes go through a queue, sent in order on every Tune callback: a store that is away (a tracking
server restarting, a locked sqlite file) costs the search nothing while it is away, and its writes
arrive when it answers again. What could not be sent by the end of a search stays in the spool (a
JSON file in the Ray experiment folder, ``spool_file``), which ``--resume`` sends first. A server that
answers with an error of its own (a 500: a bug, or a database behind it that failed) is tried
``SERVER_TRIES`` times with the same backoff, then its writes stay in the spool the same way: no store
error ever reaches Tune, where it would end the search.

Every write names its trial by Ray trial id, never by run id, so a spool written during an outage is
valid for the process that resumes the launch. An epoch re-trained after a resume is not logged again.
The Tune callback that fills the queue is ``trainables.mlflow_trials.MLflowTrials``.
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from pathlib import Path

import requests
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException, RestException
from mlflow.tracking import MlflowClient

from medtune.data.cocoio import write_json_atomic
from medtune.tracking.provenance import trial_inputs
from medtune.tracking.redact import redact_uri
from medtune.tracking.store import PARENT_TAG, TRIAL_TAG, exception_chain, fail_fast, open_client, transient

SPOOL_NAME = "mlflow_pending.json"
BACKOFF_S = (0.5, 15.0)  # first and longest pause between tries of a store that does not answer
SERVER_TRIES = 4  # tries of a write a server answers with a 5xx (backoff 0.5 + 1 + 2 s), then it is kept


def spool_file(experiment_path: Path) -> Path:
    """Where a launch keeps the trial writes its store did not take: its Ray experiment folder."""
    return Path(experiment_path) / SPOOL_NAME


def pending_writes(spool: Path) -> int:
    """How many trial writes are waiting in ``spool`` for the store (0 when none)."""
    try:
        return len(json.loads(spool.read_text()))
    except FileNotFoundError:
        return 0


class PendingWrites:
    """The trial logger's writes, queued and sent in order to the store, kept in ``spool`` while unsent.

    Every write names its trial by Ray trial id, never by run id, so a spool written during an outage
    is valid for the process that resumes the launch. Args are ``MLflowTrials``'s.
    """

    def __init__(
        self, *, tracking_uri: str, experiment_id: str, parent_run_id: str, metric: str, mode: str, spool: Path | None
    ) -> None:
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.metric, self.mode, self.spool = metric, mode, spool
        self.runs: dict[str, str] = {}  # Ray trial id -> MLflow run id, as far as the store was read
        self._client: MlflowClient | None = None
        self._best: dict[str, tuple[float, int]] = {}  # Ray trial id -> (best objective, its epoch)
        self._epochs: dict[str, int] = {}  # Ray trial id -> the last epoch its run has
        self._queue: deque[dict] = deque(json.loads(spool.read_text()) if spool and spool.is_file() else [])
        self._synced = False  # ``runs`` and the bests were read from the store since the last failed write
        self._failures, self._retry_at, self._down_since = 0, 0.0, 0.0
        self._server_errors = 0  # tries in a row the server answered with an error of its own (``server_error``)

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = open_client(self.tracking_uri)
        return self._client

    def start(self, trial: str, *, name: str, tags: dict[str, str], params: dict[str, str]) -> None:
        """The trial's run: created, or set RUNNING again when the store has one (a trial resumed)."""
        self._queue.append({"op": "start", "trial": trial, "name": name, "tags": tags, "params": params})

    def log(self, trial: str, *, step: int, metrics: list[list], tags: dict[str, str]) -> None:
        """Epoch ``step``: ``[key, value, timestamp_ms, step]`` points, with ``best/*`` added when it improved;
        skipped when the run already has that epoch (re-trained after a resume)."""
        self._queue.append({"op": "log", "trial": trial, "step": step, "metrics": metrics, "tags": tags})

    def end(self, trial: str, *, tags: dict[str, str], status: str) -> None:
        self._queue.append({"op": "end", "trial": trial, "tags": tags, "status": status})

    def retire(self, trial: str) -> None:
        """A run the restored search no longer knows: tagged ``status=lost``, KILLED, deleted."""
        self._queue.append({"op": "retire", "trial": trial})

    def drain(self, deadline: float) -> bool:
        """Try to send everything until ``deadline`` (``time.monotonic``); whether nothing is left."""
        while not self.flush():
            now = time.monotonic()
            if now >= deadline or self.kept:
                return False
            time.sleep(max(0.05, min(self._retry_at, deadline) - now))
        return True

    def flush(self) -> bool:
        """Send the pending writes in order; whether none is left.

        A write the store refuses transiently (``tracking.transient``: a server away, a locked sqlite
        file) stays first in the queue with everything after it, and the next try waits a backoff
        (``BACKOFF_S``): a store that is away costs Tune's event loop one refused request per try, not
        MLflow's own minutes of retrying (``tracking.fail_fast``). Resending is harmless: the run map
        is re-read after a failure, so a run whose creation reached the store before the answer was
        lost is not created twice, and the store keeps a resent metric point (same key, step,
        timestamp and value) once.
        """
        queue = self._queue
        if queue and not self.kept and time.monotonic() >= self._retry_at:
            try:
                with fail_fast():
                    if not self._synced:
                        self._sync()
                    while queue:
                        self._send(queue[0])
                        queue.popleft()
                if self._failures:
                    away = time.monotonic() - self._down_since
                    print(f"[launch] the tracking store answers again after {away:.0f} s: queue sent", file=sys.stderr)
                self._failures = self._server_errors = 0
            except Exception as err:
                if transient(err):
                    self._waiting()
                elif server_error(err):
                    self._refused(err)
                else:
                    raise
        self._save()
        return not queue

    @property
    def kept(self) -> bool:
        """Whether the server answered ``SERVER_TRIES`` tries in a row with an error: the queue then stays in
        the spool for ``--resume`` (this process tries no more)."""
        return self._server_errors >= SERVER_TRIES

    def _refused(self, err: Exception) -> None:
        """After a try the server answered with an error of its own: a line, a backoff, at the last one the
        line that the writes are kept."""
        self._server_errors += 1
        self._synced = False
        answer = " ".join(str(err).split())[:200]
        if self._server_errors == 1:
            print(
                f"[launch] the tracking store {redact_uri(self.tracking_uri)} refused a trial write ({answer}): retrying",
                file=sys.stderr,
            )
        if self.kept:
            where = f"in {self.spool} for --resume" if self.spool else "in memory"
            print(
                f"[launch] the tracking store refused {SERVER_TRIES} tries in a row: keeping {len(self)} trial writes {where}",
                file=sys.stderr,
            )
        self._retry_at = time.monotonic() + min(BACKOFF_S[1], BACKOFF_S[0] * 2 ** (self._server_errors - 1))

    def _waiting(self) -> None:
        """After a refused try: the next one after a backoff, a line when the store stopped answering."""
        if not self._failures:
            self._down_since = time.monotonic()
            uri = redact_uri(self.tracking_uri)
            print(f"[launch] the tracking store {uri} does not answer: queuing writes", file=sys.stderr)
        self._synced, self._failures = False, self._failures + 1
        self._retry_at = time.monotonic() + min(BACKOFF_S[1], BACKOFF_S[0] * 2 ** (self._failures - 1))

    def _save(self) -> None:
        if self.spool is None:
            return
        if self._queue:
            write_json_atomic(self.spool, list(self._queue))
        else:
            self.spool.unlink(missing_ok=True)

    def _sync(self) -> None:
        """Read the launch's trial runs from the store: which trials have one, and each one's best so far."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.{PARENT_TAG} = '{self.parent_run_id}'", max_results=10000
        )
        runs = [r for r in runs if TRIAL_TAG in r.data.tags]
        self.runs = {r.data.tags[TRIAL_TAG]: r.info.run_id for r in runs}
        self._epochs = {r.data.tags[TRIAL_TAG]: int(r.data.metrics.get("epoch", 0)) for r in runs}
        key = f"best/{self.metric}"
        self._best = {
            r.data.tags[TRIAL_TAG]: (r.data.metrics[key], int(r.data.metrics.get("best/epoch", 0)))
            for r in runs
            if key in r.data.metrics
        }
        self._synced = True

    def _send(self, op: dict) -> None:
        trial, kind, client = op["trial"], op["op"], self.client
        if kind == "start":
            run_id = self.runs.get(trial)
            if run_id is None:
                run_id = client.create_run(self.experiment_id, run_name=op["name"], tags=op["tags"]).info.run_id
                self.runs[trial] = run_id
                # The splits the trial trains and validates on (the parent's inputs but test), for the UI.
                client.log_inputs(run_id, datasets=trial_inputs(client, self.parent_run_id))
            else:  # a trial continuing after --resume (its run was closed as KILLED), or a start resent
                client.update_run(run_id, "RUNNING")
            client.log_batch(run_id, params=[Param(k, v) for k, v in op["params"].items()])
        elif kind == "log":
            step = int(op.get("step", 0))  # a spool of an older version has none: logged as before
            if step and step <= self._epochs.get(trial, 0):
                return  # an epoch re-trained after a resume: the run has it
            metrics = [Metric(*m) for m in op["metrics"]] + self._improved(trial, op["metrics"])
            client.log_batch(self.runs[trial], metrics=metrics, tags=[RunTag(k, v) for k, v in op["tags"].items()])
            self._epochs[trial] = max(step, self._epochs.get(trial, 0))
        elif kind == "end":
            client.log_batch(self.runs[trial], tags=[RunTag(k, v) for k, v in op["tags"].items()])
            client.set_terminated(self.runs[trial], op["status"])
        elif kind == "retire" and trial in self.runs:  # a deleted run is no longer in the map once re-read
            client.set_tag(self.runs[trial], "status", "lost")
            client.set_terminated(self.runs[trial], "KILLED")
            client.delete_run(self.runs.pop(trial))

    def _improved(self, trial: str, metrics: list[list]) -> list[Metric]:
        """``best/<metric>`` and ``best/epoch`` when this epoch beats the trial's best so far.

        The leaderboard's rule (``medtune.tracking.leaderboard``): the best finite value of the objective over the
        trial's epochs, here with the first epoch that reached it.
        """
        point = next((m for m in metrics if m[0] == self.metric), None)
        if not self.metric or point is None:
            return []
        key, value, ts, step = point
        best, sign = self._best.get(trial), 1.0 if self.mode == "max" else -1.0
        if best is not None and sign * value <= sign * best[0]:
            return []
        self._best[trial] = (value, step)
        return [Metric(f"best/{key}", value, ts, step), Metric("best/epoch", float(step), ts, step)]


def server_error(err: BaseException) -> bool:
    """Whether ``err`` (or an exception it was raised from) is a remote store's 5xx answer that
    ``medtune.tracking.store.transient`` does not retry: a 500 (MLflow's client gives up at once on it inside
    ``fail_fast``: urllib3's ``RetryError``), or an error answer whose MLflow code means a 5xx."""
    for current in exception_chain(err):
        if isinstance(current, requests.exceptions.RetryError):  # urllib3 gave up on a retried error status
            return True
        if isinstance(current, RestException) and current.get_http_status_code() >= 500:
            return True
        if isinstance(current, MlflowException) and " failed with error code 5" in current.message:  # non-JSON body
            return True
    return False
