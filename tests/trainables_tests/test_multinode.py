"""A real two-node Ray cluster on this machine, run as if the nodes shared no disk.

The trials are spread over both nodes and read their data from Ray, never from the driver's cache
folder: it is moved away while they load it. The worker node has its own temp folder and working
directory, and ``--storage-path`` is an S3 bucket (moto's S3 server on this machine, reached over
HTTP as a real bucket would be): Ray's experiment state and every checkpoint go there from both nodes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import moto.settings
import pyarrow.fs
import pytest
from mlflow.tracking import MlflowClient
from moto.server import ThreadedMotoServer

from medtune.tracking.registry import champion
from medtune.tracking.store import TrackingError
from tests.helpers import PROJECT_DIR, Workspace, free_port, runs_of
from trainables import launch
from trainables.cleanup import drop_checkpoints
from trainables.ray_env import LOOPBACK
from trainables.storage import check_reachable, join, location

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
RAY = str(Path(sys.executable).parent / "ray")
# Four 2-epoch trials at 64 px, all started at once by the grid (TPE's one-at-a-time smoke trials
# are so short that one reused actor can run them all before a second worker has started). The test
# waits for each trial's first checkpoint, so one epoch after it is enough.
SPACE = """
task: classification
metric: val/balanced_acc
mode: max
search: grid
fixed: {data.image_size: 64, data.batch_size: 8, loss.name: ce, model.name: resnet18, train.saliency_metric: false}
params:
  train.lr: {choice: [0.001, 0.002, 0.003, 0.004]}
budget: {max_epochs: 2}
"""
STARTED = "Ray runtime started"  # what ``ray start`` prints once its node is up
BUCKET = "medtune-results"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "medtune-test",
    "AWS_SECRET_ACCESS_KEY": "medtune-test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def bucket() -> Iterator[tuple[str, pyarrow.fs.S3FileSystem]]:
    """An empty S3 bucket on a local S3 server: its ``--storage-path`` URI and a filesystem on it."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        keys = {
            "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        }
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys).create_bucket(Bucket=BUCKET)
        fs = pyarrow.fs.S3FileSystem(
            access_key=keys["aws_access_key_id"],
            secret_key=keys["aws_secret_access_key"],
            endpoint_override=endpoint,
            region="us-east-1",
        )
        yield f"s3://{BUCKET}/runs?endpoint_override={endpoint}&region=us-east-1", fs
    finally:
        server.stop()


def in_sessions(sids: set[int]) -> set[int]:
    """Live processes on this machine whose session id is one of ``sids`` (read from /proc/<pid>/stat).

    Zombies are left out: a killed process whose parent is gone waits for PID 1 to reap it, which in
    a container may never happen; it holds no resources and cannot be signalled.
    """
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after the command name: state ppid pgrp session
        except (OSError, IndexError):
            continue
        if int(fields[3]) in sids and fields[0] not in ("Z", "X"):  # a zombie is dead, only not yet reaped
            pids.add(int(stat.parent.name))
    return pids


def start_node(args: list[str], log: Path, env: dict, cwd: Path | None = None) -> subprocess.Popen:
    """``ray start --block`` as a child in a session of its own (its Ray processes join that session)."""
    with log.open("w") as out:
        node = subprocess.Popen(
            [RAY, "start", "--block", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    for _ in range(360):
        if STARTED in log.read_text() or node.poll() is not None:
            break
        time.sleep(0.5)
    assert STARTED in log.read_text(), log.read_text()[-3000:]
    return node


def stop_nodes(nodes: list[subprocess.Popen]) -> set[int]:
    """SIGTERM to the nodes' sessions (``ray start --block`` then stops its node), SIGKILL to what is left.

    Only the processes of those sessions are signalled: other Ray clusters on the machine (another
    test run, a user's ``ray start``) go on. Returns the processes still alive afterwards.
    """
    sids = {node.pid for node in nodes}  # a session leader's pid is its session id
    for pid in in_sessions(sids):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for _ in range(10):  # 5 s to stop gracefully (a raylet waits far longer for its workers), then SIGKILL
        if not in_sessions(sids):
            break
        time.sleep(0.5)
    for pid in in_sessions(sids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for node in nodes:
        node.wait(timeout=30)
    for _ in range(20):  # a SIGKILLed process can take a moment to leave (e.g. while it flushes to disk)
        if not in_sessions(sids):
            break
        time.sleep(0.5)
    return in_sessions(sids)


@pytest.fixture
def bystander(tmp_path: Path) -> Iterator[subprocess.Popen]:
    """A process named ``raylet`` outside the test's cluster: ``ray stop`` would kill it (it matches by name)."""
    shutil.copy("/bin/sleep", tmp_path / "raylet")
    proc = subprocess.Popen([str(tmp_path / "raylet"), "900"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@pytest.fixture
def two_node_cluster(tmp_path: Path, bystander: subprocess.Popen) -> Iterator[str]:
    port = free_port()
    temp_dirs = [Path("/tmp") / f"ray-mt-{port}{node}" for node in ("h", "w")]  # Ray's socket paths must stay short
    env = {k: v for k, v in os.environ.items() if k not in LOOPBACK}  # several nodes: not single-machine mode
    env = {**env, "RAY_AUTH_MODE": "disabled", **CREDENTIALS}  # the trials write to the bucket
    elsewhere = tmp_path / "elsewhere"  # the worker node's working directory: not the project's
    elsewhere.mkdir()
    nodes: list[subprocess.Popen] = []
    try:
        head = ["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp_dirs[0]}"]
        nodes.append(start_node(head, tmp_path / "head.log", env))
        worker = [f"--address=127.0.0.1:{port}", f"--temp-dir={temp_dirs[1]}"]
        nodes.append(start_node(worker, tmp_path / "worker.log", env, cwd=elsewhere))
        names = [comm(pid) for pid in in_sessions({node.pid for node in nodes})]
        # Each node's raylet runs in the session of its ``ray start``, where the teardown finds it.
        assert names.count("raylet") == 2 and "gcs_server" in names, names
        yield f"127.0.0.1:{port}"
    finally:
        left = stop_nodes(nodes)
        for temp_dir in temp_dirs:
            shutil.rmtree(temp_dir, ignore_errors=True)
    # Every process of both nodes is gone, and the raylet-named process outside them still runs.
    assert not left, sorted(left)
    assert bystander.poll() is None


def wait_for(done: Callable[[], bool], launch: subprocess.Popen, timeout: float = 300) -> bool:
    """Poll ``done`` every 0.1 s until it holds, the launch ends or ``timeout`` passes; whether it holds."""
    end = time.monotonic() + timeout
    while not done() and launch.poll() is None and time.monotonic() < end:
        time.sleep(0.1)
    return done()


def files(fs: pyarrow.fs.FileSystem, folder: str) -> list[str]:
    """Every file under ``folder`` of ``fs``."""
    infos = fs.get_file_info(pyarrow.fs.FileSelector(folder, recursive=True, allow_not_found=True))
    return [i.path for i in infos if i.type == pyarrow.fs.FileType.File]


def trials_with_checkpoints(fs: pyarrow.fs.FileSystem) -> int:
    """Trials of the launch that saved a checkpoint in the bucket: each has loaded its data and trained an epoch."""
    trials = {f.split("/checkpoint_")[0] for f in files(fs, f"{BUCKET}/runs") if "/checkpoint_" in f}
    return len(trials)


def test_trials_on_both_nodes_never_read_the_drivers_cache_and_write_to_a_bucket(
    bucket: tuple[str, pyarrow.fs.S3FileSystem], two_node_cluster: str, synth_dir: Path, tmp_path: Path
) -> None:
    storage, fs = bucket
    workspace = Workspace(tmp_path)
    space, log = tmp_path / "grid.yaml", tmp_path / "launch.log"
    space.write_text(SPACE)
    cache, away = tmp_path / "cache", tmp_path / "cache-away"
    argv = ["--space", str(space), "--data", str(synth_dir), "--address", two_node_cluster, "--cpus-per-trial", "1"]
    argv += ["--experiment", "multinode", "--tracking-uri", workspace.tracking_uri]
    argv += ["--storage-path", storage, "--cache-dir", str(cache)]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONWARNINGS": "ignore", **CREDENTIALS}
    with log.open("w") as out:
        launch = subprocess.Popen(
            [sys.executable, "launch.py", *argv],
            cwd=PROJECT_DIR,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # Trials start after the driver has handed the caches to Ray: from then on its cache folder is gone ...
        started = wait_for(lambda: "[trial] start" in log.read_text(), launch)
        assert started, log.read_text()[-4000:]
        cache.rename(away)
        # ... until every trial has loaded its data and trained an epoch (its first checkpoint); the
        # driver's own steps after the search (testing and logging the winner) read it again.
        trained = wait_for(lambda: trials_with_checkpoints(fs) == 4, launch)
        away.rename(cache)
        launch.wait(timeout=600)
    finally:
        if launch.poll() is None:
            os.killpg(launch.pid, signal.SIGKILL)  # the launch's own process group only
            launch.wait()
    output = log.read_text()
    assert launch.returncode == 0, output[-4000:]
    assert trained, output[-4000:]  # every trial loaded its data while the cache folder was away
    client = MlflowClient(workspace.tracking_uri, registry_uri=workspace.tracking_uri)  # not the global URI
    launches, children = runs_of(client, "multinode")
    nodes = {r.data.tags.get("node_id") for r in children}
    # Each node offers one CPU and each trial needs one, so the trials ran on both nodes, and all finished.
    assert len(children) == 4 and len(nodes) == 2 and "" not in nodes, output[-4000:]
    assert [r.info.status for r in launches + children] == ["FINISHED"] * 5
    # The launch published its winner: the first registered version of its model is the champion.
    [model] = client.search_registered_models()
    assert champion(client, model.name) is not None
    # Ray's record of the search is in the bucket; the finished launch deleted its checkpoints there.
    kept = files(fs, f"{BUCKET}/runs")
    assert [f for f in kept if f.endswith("/tuner.pkl")] and len([f for f in kept if f.endswith("/result.json")]) == 4
    assert not [f for f in kept if "/checkpoint_" in f], kept
    # What only the driver reads (its unsent trial writes) was kept under --cache-dir, not in the bucket
    # and not in a folder called "s3:" in the project.
    assert [p.name for p in (cache / "launches").iterdir()] == [Path(kept[0]).parts[2]]
    assert not (PROJECT_DIR / "s3:").exists()


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's environment holds the bucket's credentials, as each node's does."""
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)


def test_a_bucket_that_is_not_there_is_one_line(bucket: tuple[str, pyarrow.fs.S3FileSystem], credentials: None) -> None:
    storage, _ = bucket
    check_reachable(storage)  # the bucket exists: nothing to say, nothing written
    missing = storage.replace(BUCKET, "no-such-bucket")
    with pytest.raises(
        TrackingError, match=r"^--storage-path s3://no-such-bucket/runs\?.*: no bucket 'no-such-bucket'"
    ):
        check_reachable(missing)
    unreachable = storage.split("?")[0] + f"?endpoint_override=http://127.0.0.1:{free_port()}&region=us-east-1"
    with pytest.raises(TrackingError, match=r"^--storage-path s3://.*: cannot reach it \("):
        check_reachable(unreachable)


def test_checkpoints_in_a_bucket_are_dropped_and_a_bucket_gone_is_one_line(
    bucket: tuple[str, pyarrow.fs.S3FileSystem], credentials: None, tmp_path: Path, capsys
) -> None:
    storage, fs = bucket
    experiment = f"{BUCKET}/runs/exp-1"
    for name in ("trial_a/checkpoint_000001/checkpoint", "trial_a/result.json", "tuner.pkl"):
        with fs.open_output_stream(f"{experiment}/{name}") as out:
            out.write(b"x" * 1000)
    loc = location(join(storage, "exp-1"), tmp_path / "cache")
    # The checkpoint folder goes (1000 bytes); the trial's result and the tuner stay.
    assert drop_checkpoints(loc) == (1, 1000)
    assert sorted(files(fs, experiment)) == [f"{experiment}/trial_a/result.json", f"{experiment}/tuner.pkl"]
    # A bucket that stopped answering after the winner was logged: one line, the launch goes on.
    gone = location(
        join(storage.split("?")[0] + f"?endpoint_override=http://127.0.0.1:{free_port()}", "exp-1"), tmp_path
    )
    assert drop_checkpoints(gone) == (0, 0)
    err = capsys.readouterr().err
    assert err.startswith("[launch] could not list the checkpoints under s3://") and len(err.splitlines()) == 1


# A user who may look at the bucket and read it, and nothing else (no PutObject, no multipart upload).
READ_ONLY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
        {"Effect": "Deny", "NotAction": ["s3:Get*", "s3:List*", "s3:Head*"], "Resource": "*"},
    ],
}


@pytest.fixture
def read_only(bucket: tuple[str, pyarrow.fs.S3FileSystem], monkeypatch: pytest.MonkeyPatch) -> str:
    """The bucket's ``--storage-path``, with this process's credentials those of a read-only user and the
    local S3 server checking every request against its IAM policies from now on (until the test ends)."""
    storage, _ = bucket
    endpoint = storage.split("endpoint_override=")[1].split("&")[0]
    keys = {"aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": "medtune-test"}
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", **keys)
    iam.create_user(UserName="reader")
    iam.put_user_policy(UserName="reader", PolicyName="read-only", PolicyDocument=json.dumps(READ_ONLY))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # moto's switch: enforce IAM now
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return storage


def test_a_read_only_bucket_is_one_line_before_anything_also_on_resume(
    read_only: str, synth_dir: Path, tmp_path: Path, capsys
) -> None:
    # The bucket is there and can be listed, but a write is refused: one line, naming the flag.
    reader = pyarrow.fs.FileSystem.from_uri(read_only)[0]
    before = files(reader, BUCKET)  # the module's earlier tests share the bucket
    with pytest.raises(TrackingError, match=r"^--storage-path s3://medtune-results/runs\?.*: cannot write there \(.*"):
        check_reachable(read_only)
    # The same through the launch, continuing an earlier one: refused before anything is prepared.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--space", "whole_cls", "--smoke", "--data", str(synth_dir), "--tracking-uri", uri, "--resume"]
    code = launch.main([*args, "--storage-path", read_only, "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --storage-path s3://") and len(err.strip().splitlines()) == 1, err
    assert "cannot write there" in err and "Traceback" not in err
    # No cache, no MLflow store, no run; and the probe left nothing in the bucket.
    assert list(tmp_path.iterdir()) == []
    assert files(reader, BUCKET) == before  # listed as the reader
