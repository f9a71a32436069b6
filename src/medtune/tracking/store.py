"""MLflow conventions shared by the launcher, the trainables' logger and ``analyze.py``.

Layout: one experiment per search space (or ``--experiment``); one parent run per launch, tagged
``medtune.launch=true``; one child run per trial (``mlflow.parentRunId`` = the parent, and the
Ray trial id in ``ray_trial_id``). Segmenters are registered as ``seg-<dataset>-<fingerprint>``;
the alias ``champion`` points at the best version for that dataset.
"""

from __future__ import annotations

import io
import os
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import requests
import sqlalchemy.exc
from filelock import FileLock, Timeout
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from medtune.config.project import project_dir

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "ray_trial_id"
LAUNCH_TAG = "medtune.launch"


class TrackingError(RuntimeError):
    """A tracking-store problem for the user (unknown experiment, no champion); one line."""


def default_tracking_uri() -> str:
    """The sqlite store in the project folder, which plain ``mlflow ui`` there also reads."""
    return f"sqlite:///{project_dir() / 'mlflow.db'}"


def lock_path(db: Path, suffix: str = "") -> Path:
    """The lock file of a sqlite store, out of the user's sight: ``.cache/locks/`` beside the database.

    Beside the database, not in the working directory, so that every process using the store (trials
    run in Ray's folders) takes the same lock.
    """
    folder = db.parent / ".cache" / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{db.name}{suffix}.lock"


def sqlite_file(uri: str) -> Path | None:
    """The absolute database file of a ``sqlite:///`` URI; None for other stores and ``:memory:``."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri.startswith(prefix + ":memory:"):
        return None
    return Path(uri[len(prefix) :].split("?", 1)[0]).resolve()


LOCK_TIMEOUT_S = 300  # creating a store takes seconds; minutes of waiting means a stuck holder
RETRIES = 6  # backoff 0.5+1+2+4+8 s (x1-1.5 jitter): about 20 s on top of MLflow's own waiting
TRANSIENT_HTTP = {408, 429, 502, 503, 504}  # what MLflow's REST client itself retries, less 500 (a bug)
FAIL_FAST_TIMEOUT_S = 30  # a healthy server answers a write in ms; a busy sqlite store behind it in up to 20 s
_HTTP_RETRIES, _HTTP_TIMEOUT = "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"
T = TypeVar("T")


@contextmanager
def _held(lock_file: Path) -> Iterator[None]:
    """Hold a ``FileLock`` on ``lock_file`` (released by the OS if this process dies)."""
    lock = FileLock(str(lock_file), timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except Timeout:
        raise TrackingError(f"{lock_file}: still locked after {LOCK_TIMEOUT_S} s by another process") from None
    except OSError as err:
        raise TrackingError(f"{lock_file}: cannot create the lock file ({err.strerror})") from None
    try:
        yield
    finally:
        lock.release()


def open_client(uri: str) -> MlflowClient:
    """A client of store ``uri`` (tracking and registry) once the store exists and is migrated.

    MLflow creates and migrates a fresh sqlite file on first open with no lock between processes:
    three processes opening one at once, two crashed ("table ... already exists", "Online migration
    expected to match one row"). Here that first open runs under a ``FileLock`` (``lock_path``): one
    process creates the tables, the others wait, then find them. Other stores pass through untouched
    (their server migrates). Call it before any other MLflow access of a process that may be first.
    """
    path = sqlite_file(uri)
    if path is None:
        return MlflowClient(uri, registry_uri=uri)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TrackingError(f"{uri}: cannot create the store's folder ({err.strerror})") from None
    with _held(lock_path(path)):
        _readable(path, uri)
        try:
            client = retrying(lambda: MlflowClient(uri, registry_uri=uri))  # opens the store: creates, migrates
            retrying(lambda: client.search_registered_models(max_results=1))  # the registry's store, same file
        except (MlflowException, sqlalchemy.exc.SQLAlchemyError) as err:  # e.g. a schema older than MLflow's
            raise TrackingError(f"{uri}: cannot open the store ({' '.join(str(err).split())[:300]})") from None
    return client


def _readable(path: Path, uri: str) -> None:
    """Fail at once on a file that is not a sqlite database (MLflow retries that for about 100 s)."""
    if not path.is_file():
        return
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as con:
            con.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.OperationalError:
        return  # locked, or unreadable: MLflow's open retries and says which
    except sqlite3.DatabaseError as err:
        raise TrackingError(f"{uri}: {path} is not an MLflow store ({err})") from None


def transient(err: BaseException) -> bool:
    """Whether ``err`` (or an exception it was raised from) is worth retrying.

    sqlite's "database is locked" (raw, or as the cause MLflow chains to its TEMPORARILY_UNAVAILABLE,
    which it also gives every other sqlite error), a remote store's 408/429/502/503/504, and a connection
    refused, reset or timed out (MLflow's REST client re-raises those as a plain ``MlflowException``).
    """
    for current in exception_chain(err):
        if isinstance(current, (sqlite3.OperationalError, sqlalchemy.exc.OperationalError)):
            return "is locked" in str(current)
        local = isinstance(current.__cause__, sqlalchemy.exc.OperationalError)  # judged by its cause, next
        if isinstance(current, MlflowException) and not local and current.get_http_status_code() in TRANSIENT_HTTP:
            return True
        if isinstance(current, (requests.ConnectionError, requests.Timeout)):
            return True
    return False


def exception_chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and the exceptions it was raised from (``__cause__``, else ``__context__``), once each."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _retried_by_mlflow(err: BaseException) -> bool:
    """A remote store's error that MLflow's REST client already retried (about 4 minutes; not in ``fail_fast``)."""
    local = any(
        isinstance(e, (sqlite3.OperationalError, sqlalchemy.exc.OperationalError)) for e in exception_chain(err)
    )
    return not local and os.environ.get(_HTTP_RETRIES) != "0"


def retrying(fn: Callable[[], T], *, attempts: int = RETRIES, delay: float = 0.5) -> T:
    """``fn()``, retried with exponential backoff while it fails ``transient``-ly; other errors at once.

    MLflow's sqlite store already sets ``PRAGMA busy_timeout = 20000`` on each session (a write waits
    up to 20 s for a lock), but not on the engine's first connections (sqlite3's default 5 s), and a
    busy writer can starve past 20 s. A remote store's request was already retried by MLflow's client
    (7 times with backoff, about 4 minutes, outside ``fail_fast``): its error is raised at once, not
    waited out ``attempts`` times over. The last attempt's error is raised unchanged.
    """
    for attempt in range(attempts - 1):
        try:
            return fn()
        except Exception as err:
            if not transient(err) or _retried_by_mlflow(err):
                raise
            time.sleep(delay * 2**attempt * random.uniform(1.0, 1.5))
    return fn()


@contextmanager
def fail_fast(timeout_s: int = FAIL_FAST_TIMEOUT_S) -> Iterator[None]:
    """MLflow HTTP requests without MLflow's own retries, for a caller that keeps and resends its writes.

    MLflow's REST client retries a refused connection or a 5xx itself, 7 times with exponential backoff:
    about 4 minutes per request before it raises. A caller on Tune's event loop (the trial logger) cannot
    wait that long per write without stalling the search; inside this block a request to a server that
    is away fails at once (or after ``timeout_s`` without an answer) and the caller resends it later.
    Set through MLflow's environment variables, which it reads at each request: one thread at a time
    (the driver's Tune callbacks all run on its event loop).
    """
    saved = {name: os.environ.get(name) for name in (_HTTP_RETRIES, _HTTP_TIMEOUT)}
    os.environ.update({_HTTP_RETRIES: "0", _HTTP_TIMEOUT: str(timeout_s)})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """``mlruns/<experiment>/`` beside a sqlite store's file: a store (runs and models) is one folder.

    MLflow's own default is ``./mlruns/<id>`` of the current directory, wherever the store is.
    Other stores (a tracking server, postgres) keep their configured artifact root (None).
    """
    path = sqlite_file(tracking_uri)
    if path is None:
        return None
    folder = "".join(c if c.isalnum() or c in "-_." else "-" for c in experiment)
    return (path.parent / "mlruns" / folder).as_uri()


def experiment_id(client: MlflowClient, name: str, *, create: bool) -> str:
    """The id of experiment ``name``; unknown names list the existing experiments."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage == "active":
        return experiment.experiment_id
    if create:
        try:
            return client.create_experiment(name, artifact_location=artifact_location(client.tracking_uri, name))
        except MlflowException as err:  # another launch created it between the look-up and here: use that one
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)
            if experiment is None or experiment.lifecycle_stage != "active":  # a deleted experiment holds the name
                raise
            return experiment.experiment_id
    names = sorted(e.name for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY) if e.name != "Default")
    raise TrackingError(f"unknown experiment '{name}'; existing: {', '.join(names) or 'none (run launch.py first)'}")


def latest_launch(client: MlflowClient, exp_id: str) -> Any:
    """The most recent parent run of an experiment."""
    runs = client.search_runs(
        [exp_id], filter_string=f"tags.`{LAUNCH_TAG}` = 'true'", order_by=["attributes.start_time DESC"], max_results=1
    )
    if not runs:
        raise TrackingError(f"experiment {exp_id} has no launch yet (run launch.py first)")
    return runs[0]


def trial_runs(client: MlflowClient, exp_id: str, parent_run_id: str) -> list:
    """Every child run of a launch (all statuses)."""
    return client.search_runs([exp_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=50000)


def read_artifact(client: MlflowClient, run_id: str, path: str) -> bytes | None:
    """The bytes of a run's artifact, or None when the run has no such artifact."""
    if path not in {a.path for a in client.list_artifacts(run_id)}:
        return None
    with tempfile.TemporaryDirectory() as folder:
        return Path(client.download_artifacts(run_id, path, folder)).read_bytes()


def read_arrays(client: MlflowClient, run_id: str, path: str) -> dict[str, np.ndarray] | None:
    """The arrays of a run's ``.npz`` artifact (pickled objects refused), or None when the run has no such artifact."""
    data = read_artifact(client, run_id, path)
    if data is None:
        return None
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}
