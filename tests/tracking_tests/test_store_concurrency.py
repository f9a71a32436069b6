"""The sqlite store under concurrency: a fresh store opened by several processes at once, locked writes, and
three real launches started together on one store."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from medtune.tracking.store import TrackingError, open_client, retrying, sqlite_file, transient
from tests.helpers import Workspace, runs_of

PROCESSES = 3

# Each process imports first, says it is ready, then waits for a shared "go" so that all three open
# the fresh store within a millisecond or so of each other (unprotected, two of three crashed).
OPENER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from medtune.tracking.store import open_client
    uri, folder, i = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    (folder / f"ready-{i}").touch()
    while not (folder / "go").exists():
        time.sleep(0.001)
    client = open_client(uri)
    exp = client.create_experiment(f"exp-{i}")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "val/iou", 0.5)
    client.set_terminated(run.info.run_id)
    """
)

# Holds an exclusive write transaction on the database for HOLD_S seconds, then commits.
HOLDER = textwrap.dedent(
    """
    import sqlite3, sys, time
    con = sqlite3.connect(sys.argv[1], isolation_level=None)
    con.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    con.execute("COMMIT")
    """
)
HOLD_S = 1.0


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[subprocess.Popen], list[str]]:
    """A store created by PROCESSES processes opening it at once: its URI, the processes, their stderr."""
    folder = tmp_path_factory.mktemp("race")
    uri = f"sqlite:///{folder / 'store' / 'mlflow.db'}"  # the folder does not exist yet either
    procs = [
        subprocess.Popen([sys.executable, "-c", OPENER, uri, str(folder), str(i)], stderr=subprocess.PIPE, text=True)
        for i in range(PROCESSES)
    ]
    deadline = time.monotonic() + 60
    while len(list(folder.glob("ready-*"))) < PROCESSES and time.monotonic() < deadline:
        time.sleep(0.01)
    (folder / "go").touch()
    return uri, procs, [p.communicate(timeout=120)[1] for p in procs]


@pytest.mark.e2e
def test_fresh_store_opened_by_three_processes_at_once(store: tuple) -> None:
    uri, procs, errors = store
    # Every process creates its experiment and run: the store is created once, the others wait for it.
    assert [p.returncode for p in procs] == [0] * PROCESSES, "\n".join(e[-2000:] for e in errors)
    names = {e.name for e in MlflowClient(uri).search_experiments()}
    assert names >= {f"exp-{i}" for i in range(PROCESSES)}


def _hold_lock(db: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), str(HOLD_S)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


@pytest.mark.e2e
def test_metric_logged_while_another_process_holds_a_write_lock(store: tuple) -> None:
    uri = store[0]
    client = open_client(uri)
    run_id = client.create_run(client.create_experiment("locked")).info.run_id
    holder = _hold_lock(sqlite_file(uri))
    start = time.monotonic()
    retrying(lambda: client.log_metric(run_id, "val/iou", 0.75))
    waited = time.monotonic() - start
    holder.wait(timeout=30)
    # The write waited for the lock (about HOLD_S) instead of failing, and landed.
    assert waited > HOLD_S / 2
    assert [m.value for m in client.get_metric_history(run_id, "val/iou")] == [0.75]


def test_locked_database_is_retried_until_released(tmp_path: Path) -> None:
    db = tmp_path / "plain.db"
    sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.commit()
    holder = _hold_lock(db)
    attempts = []

    def insert() -> None:
        attempts.append(time.monotonic())
        with sqlite3.connect(db, timeout=0) as con:  # no busy wait: "database is locked" at once
            con.execute("INSERT INTO t VALUES (1)")

    retrying(insert, delay=0.2)
    holder.wait(timeout=30)
    # The first attempts met the lock and were retried; the insert landed once it was released.
    assert len(attempts) > 1 and attempts[-1] - attempts[0] > HOLD_S / 2
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM t").fetchone() == (1,)


def test_other_errors_are_not_retried(tmp_path: Path) -> None:
    calls = []

    def bad_query() -> None:
        calls.append(1)
        sqlite3.connect(tmp_path / "x.db").execute("SELECT * FROM missing")

    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        retrying(bad_query, delay=0.01)
    # A missing table is a bug, not contention: raised after one call.
    assert len(calls) == 1


def test_unreachable_server_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own HTTP retries off: fail fast
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connection refused
    client = open_client(f"http://127.0.0.1:{port}")  # a remote store passes through, untouched
    with pytest.raises(MlflowException) as err:
        client.search_experiments(max_results=1)
    assert transient(err.value)


def test_store_in_an_unwritable_place_is_one_tracking_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    # The store's folder would have to be created inside a regular file.
    with pytest.raises(TrackingError, match="cannot create the store's folder"):
        open_client(f"sqlite:///{blocker / 'sub' / 'mlflow.db'}")


def test_file_that_is_not_a_store_is_one_tracking_error(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    db.write_text("notes, not a database " * 10)
    start = time.monotonic()
    with pytest.raises(TrackingError, match="is not an MLflow store") as err:
        open_client(f"sqlite:///{db}")
    # At once, in one line (MLflow itself retries opening such a file for about 100 s).
    assert time.monotonic() - start < 10 and "\n" not in str(err.value)


def test_store_of_an_older_schema_is_one_tracking_error(store: tuple, tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    db.write_bytes(sqlite_file(store[0]).read_bytes())
    with sqlite3.connect(db) as con:
        con.execute("UPDATE alembic_version SET version_num = '451aebb31d03'")  # MLflow's first revision
    with pytest.raises(TrackingError, match="cannot open the store .*out-of-date database schema") as err:
        open_client(f"sqlite:///{db}")
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_three_launches_at_once_on_one_store_lose_nothing(shared_workspace: Workspace, first_launches: dict) -> None:
    """conftest ``first_launches``: segmentation (2 folds) and whole_cls on one synthetic set and whole_cls on
    a second one, started at the same moment on a fresh store (their caches built at the same time too)."""
    client = MlflowClient(shared_workspace.tracking_uri)
    found = expected = 0
    for experiment, launch in first_launches.items():
        parents, children = runs_of(client, experiment)
        # Each launch finished with one parent run and one finished child run per trial ...
        assert launch.returncode == 0 and len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert children and all(r.info.status == "FINISHED" for r in children), experiment
        objective = parents[0].data.params["metric"]
        for run in children:
            epochs = int(run.data.tags["epochs_run"])
            keys = ["epoch", "val/loss", objective]
            if "cv_folds" in parents[0].data.params:  # cross-validated: both folds' scores every round
                keys += [f"cv/fold{k}/{objective}" for k in range(int(parents[0].data.params["cv_folds"]))]
            for key in keys:
                # ... with every epoch's metrics, each exactly once.
                steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
                assert steps == list(range(1, epochs + 1)), (experiment, run.info.run_name, key, steps)
                found, expected = found + len(steps), expected + epochs
    print(f"3 launches at once: {expected} metric points expected, {found} found")
