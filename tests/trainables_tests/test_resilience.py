"""Searches that survive: failing trials, concurrent logging, a tracking server that goes away, safe loading."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from medtune.engine.evaluate import load_system
from medtune.tracking.store import PARENT_TAG, TRIAL_TAG
from tests.helpers import Workspace, free_port, runs_of

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.shared_ray,
]  # launches, Ray or a real server (workspace launches join the Ray head)

FAILING_GRID = """
task: classification
metric: val/balanced_acc
mode: max
search: grid
fixed: {data.image_size: 32, data.batch_size: 8, loss.name: ce, train.saliency_metric: false}
params:
  model.name: {choice: [resnet18, vit_b_16]}
  model.image_size: {choice: [224], when: {model.name: vit_b_16}}   # 224 px ViT on 32 px images: raises
budget: {max_epochs: 1}
"""


@pytest.mark.slow
def test_failing_trial_is_failed_everywhere_and_the_search_goes_on(
    workspace: Workspace, synth_dir: Path, tmp_path: Path
) -> None:
    space = tmp_path / "failing.yaml"
    space.write_text(FAILING_GRID)
    result = workspace.launch("--space", str(space), "--data", str(synth_dir), "--experiment", "failing")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(workspace.tracking_uri)
    parents, children = runs_of(client, "failing")
    by_model = {r.data.params["model.name"]: r for r in children}
    # The bad configuration failed with its error recorded; the good one finished and won.
    assert by_model["vit_b_16"].info.status == "FAILED" and by_model["vit_b_16"].data.tags["status"] == "failed"
    assert "Wrong image height" in by_model["vit_b_16"].data.tags["error"]
    assert by_model["resnet18"].info.status == "FINISHED" and parents[0].info.status == "FINISHED"
    report = workspace.analyze("--experiment", "failing", "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr[-2000:]
    assert "failed" in report.stdout and "Wrong image height" in report.stdout


LOAD_TRIALS = 8  # two waves of 4 trials that end within the same second


@pytest.mark.slow
def test_many_trials_finishing_together_lose_no_metric(workspace: Workspace, synth_dir: Path) -> None:
    started = time.time()
    result = workspace.launch(
        "--space",
        "segmentation",
        "--smoke",
        "--data",
        str(synth_dir),
        "--experiment",
        "load",
        "--num-samples",
        str(LOAD_TRIALS),
        "--max-epochs",
        "1",
        "--cpus-per-trial",
        "0.5",
        "--max-concurrent",
        "4",
    )
    minutes = (time.time() - started) / 60
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(workspace.tracking_uri)
    _, children = runs_of(client, "load")
    expected = {"train/loss", "val/loss", "val/iou", "val/dice", "epoch"}
    missing = [
        (r.info.run_name, expected - set(r.data.metrics)) for r in children if not expected <= set(r.data.metrics)
    ]
    # LOAD_TRIALS one-epoch trials, 4 at a time (waves of 4 finishing together): every run is there,
    # finished, with every metric.
    assert len(children) == LOAD_TRIALS and all(r.info.status == "FINISHED" for r in children)
    assert missing == []
    print(
        f"load test: {LOAD_TRIALS} trials in {minutes:.2f} min = {LOAD_TRIALS / minutes:.1f} trials/min, lost: {len(missing)}"
    )


SECRET = "medtune-test-secret-7f3a9c"
SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD", "HF_TOKEN")
OUTAGE_S = 8  # the tracking server is stopped this long (plus its stop and restart, about 5 s) mid-search


class TrackingServer:
    """A real ``mlflow server`` on a sqlite store, in a process group of its own, that can be stopped and
    restarted on the same port and store (``stop`` ends that group: the server and the workers it spawned)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # No background job runner: it is for MLflow's GenAI jobs, and its workers ignore SIGTERM.
        self.env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}"]
        cmd += ["--artifacts-destination", str(self.folder / "artifacts"), "--workers", "1"]
        out = subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, cwd=self.folder, env=self.env, stdout=out, stderr=out, start_new_session=True)
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=1)
                return
            except OSError:
                time.sleep(0.5)
        self.stop()
        pytest.fail("mlflow server did not answer /health within 120 s")

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                proc.poll()  # reaps the group's leader
                try:
                    os.killpg(proc.pid, 0)  # anyone of the group left?
                except ProcessLookupError:
                    return
                time.sleep(0.25)


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[TrackingServer]:
    server = TrackingServer(tmp_path)
    server.start()
    yield server
    server.stop()


def _wait_for_a_logged_epoch(client: MlflowClient, launch: subprocess.Popen, log: Path) -> None:
    """Return once a trial run of experiment ``whole_cls`` holds an epoch's metrics."""
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and launch.poll() is None:
        experiment = client.get_experiment_by_name("whole_cls")
        if experiment and client.search_runs([experiment.experiment_id], "metrics.epoch >= 1", max_results=1):
            return
        time.sleep(0.5)
    pytest.fail(f"no trial logged an epoch (launch exit {launch.poll()}):\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_a_tracking_server_away_mid_search_costs_nothing_and_sees_no_secret(
    mlflow_server: TrackingServer, synth_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ray_head: str
) -> None:
    workspace, url = Workspace(tmp_path, ray_head), mlflow_server.url
    # The launch reaches the server through a URI with a password (basic auth, which this server ignores):
    # it must be used, never shown or stored.
    workspace.tracking_uri = url.replace("http://", f"http://medtune:{SECRET}@")
    for name in SECRET_VARS:  # the launch's environment; the server was started without them
        monkeypatch.setenv(name, SECRET)
    args = ("--smoke", "--num-samples", "3", "--max-epochs", "3")  # epochs enough to go on during the outage
    log = tmp_path / "launch.log"
    launch = workspace.start_launch("--space", "whole_cls", *args, "--data", str(synth_dir), log=log)
    client = MlflowClient(url, registry_uri=url)
    try:
        _wait_for_a_logged_epoch(client, launch, log)
        mlflow_server.stop()
        stopped = time.time()
        time.sleep(OUTAGE_S)
        mlflow_server.start()  # same port, same store
        back = time.time()
        code = launch.wait(timeout=600)
    finally:
        if launch.poll() is None:
            os.killpg(launch.pid, signal.SIGKILL)
    output = log.read_text()
    assert code == 0, output[-3000:]
    parents, children = runs_of(client, "whole_cls")
    keys = {k for r in children for k in r.data.metrics if not k.startswith(("best/", "test/"))}  # test/: the winner's
    epochs = {r.info.run_id: int(r.data.tags["epochs_run"]) for r in children}
    steps = {(r, k): sorted(m.step for m in client.get_metric_history(r, k)) for r in epochs for k in keys}
    during = sum(stopped <= m.timestamp / 1000 < back for r in epochs for m in client.get_metric_history(r, "epoch"))
    expected, found = sum(epochs.values()) * len(keys), sum(len(s) for s in steps.values())
    print(
        f"server away {back - stopped:.1f} s, {during} epochs reported meanwhile; points {expected} expected, {found} found"
    )
    # Every epoch of every trial arrived, once: none lost to the outage, none sent twice.
    assert {rk: s for rk, s in steps.items() if s != list(range(1, epochs[rk[0]] + 1))} == {}
    # The outage fell in the middle of the search: the logger queued, and epochs reported meanwhile arrived too.
    assert "does not answer" in output and "answers again" in output and during >= 1
    # Nothing left RUNNING; the winner tested, logged and registered through the restarted server.
    assert len(parents) == 1 and len(children) == 3
    assert {r.info.status for r in parents + children} == {"FINISHED"}
    assert "test/balanced_acc" in parents[0].data.metrics
    assert client.get_registered_model(parents[0].data.tags["registered_model"].split("/")[0]).aliases
    # Parameters, tags and the provenance artifacts come from the space and the code, never the environment.
    texts = []
    for run in parents + children:
        texts += [*run.data.params.values(), *run.data.tags.values(), *run.data.params, *run.data.tags]
    for name in ("search_space.yaml", "resolved_space.json", "versions.json"):
        texts.append(Path(client.download_artifacts(parents[0].info.run_id, name, str(tmp_path))).read_text())
    assert not [t for t in texts if SECRET in t]
    # Nor the terminal (the outage lines, the tracking URI printed at the end, the resume hint), nor any
    # file the launch or the server wrote: the launch log, the server's store and artifacts, the caches.
    assert SECRET not in output and workspace.tracking_uri not in output
    # Ray's state too: tuner.pkl holds the pickled trial logger, which keeps the URI without its password.
    leaks = [f for f in tmp_path.rglob("*") if f.is_file() and SECRET.encode() in f.read_bytes()]
    assert leaks == []


def test_writes_wait_for_a_store_that_is_away(tmp_path: Path) -> None:
    from trainables.spool import PendingWrites, pending_writes

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = MlflowClient(uri)
    exp = store.create_experiment("away")
    ids = {"experiment_id": exp, "parent_run_id": store.create_run(exp).info.run_id}
    spool = tmp_path / "pending.json"
    # A tracking server that is down: nobody listens on its port.
    away = PendingWrites(
        tracking_uri=f"http://127.0.0.1:{free_port()}", **ids, metric="val/acc", mode="max", spool=spool
    )
    away.start("t1", name="t1", tags={PARENT_TAG: ids["parent_run_id"], TRIAL_TAG: "t1"}, params={"train.lr": "0.01"})
    for epoch, acc in [(1, 0.5), (2, 0.7), (3, 0.6)]:
        points = [["val/acc", acc, 1000 * epoch, epoch], ["epoch", epoch, 1000 * epoch, epoch]]
        away.log("t1", step=epoch, metrics=points, tags={})
    away.end("t1", tags={"status": "completed"}, status="FINISHED")
    started = time.monotonic()
    # Nobody answers: nothing is raised, nothing lost; the five writes wait in the spool.
    assert not away.drain(time.monotonic() + 2) and pending_writes(spool) == 5
    assert time.monotonic() - started < 5  # each try fails at once, not after MLflow's own minutes of retries
    # The launch's next process (--resume) sends the spool, in order, once the store answers.
    back = PendingWrites(tracking_uri=uri, **ids, metric="val/acc", mode="max", spool=spool)
    assert back.drain(time.monotonic() + 30) and not spool.exists()
    again = PendingWrites(tracking_uri=uri, **ids, metric="val/acc", mode="max", spool=None)
    again.log("t1", step=2, metrics=[["val/acc", 0.7, 2000, 2]], tags={})  # a write resent after a lost answer
    assert again.drain(time.monotonic() + 30)
    (run,) = store.search_runs([exp], f"tags.{TRIAL_TAG} = 't1'")
    history = [(m.step, m.value) for m in store.get_metric_history(run.info.run_id, "val/acc")]
    # One run, each epoch once, and its best epoch as the leaderboard ranks it.
    assert run.info.status == "FINISHED" and history == [(1, 0.5), (2, 0.7), (3, 0.6)]
    assert run.data.metrics["best/val/acc"] == 0.7 and run.data.metrics["best/epoch"] == 2


class Evil:
    def __reduce__(self):
        return (print, ("this code ran while loading a checkpoint",))


def test_tampered_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint"
    torch.save({"state_dict": {}, "payload": Evil()}, path)
    config = {"model.name": "unet", "model.width": 4, "model.depth": 2, "loss.name": "bce", "data.image_size": 32}
    # weights_only loading refuses arbitrary objects: one clear error naming the file.
    with pytest.raises(RuntimeError, match="refused to load checkpoint"):
        load_system("segmentation", config, path, num_classes=1, max_epochs=1)
