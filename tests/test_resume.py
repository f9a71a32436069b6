"""Kill the launcher mid-search, resume it: no trial re-run, one MLflow run per trial, none RUNNING."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from src.tracking import LAUNCH_TAG, PARENT_TAG, TRIAL_TAG

pytestmark = pytest.mark.slow
PROJECT_DIR = Path(__file__).resolve().parent.parent
SAMPLES = 4


def _runs(client: MlflowClient) -> tuple[list, list]:
    exp = client.get_experiment_by_name("whole_cls")
    if exp is None:
        return [], []
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get(LAUNCH_TAG) == "true"], [r for r in runs if PARENT_TAG in r.data.tags]


def test_sigkill_then_resume(workspace, synth_dir: Path) -> None:
    args = ["--space", "whole_cls", "--smoke", "--data", str(synth_dir), "--num-samples", str(SAMPLES),
            "--max-epochs", "3", "--max-concurrent", "1", "--tracking-uri", workspace.tracking_uri,
            "--storage-path", str(workspace.root / "runs"), "--cache-dir", str(workspace.root / "cache")]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "launch.py", *args], cwd=PROJECT_DIR, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = MlflowClient(workspace.tracking_uri)
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until one trial finished and the next one runs
        _, children = _runs(client)
        if any(r.info.status == "FINISHED" for r in children) and any(r.info.status == "RUNNING" for r in children):
            break
        assert proc.poll() is None, "the launcher ended before it could be killed"
        time.sleep(1)
    time.sleep(3)  # let Ray write its experiment state once more
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the Ray processes it started
    proc.wait()
    _, before = _runs(client)
    finished_before = {r.data.tags[TRIAL_TAG]: r for r in before if r.info.status == "FINISHED"}
    assert finished_before and len(before) < SAMPLES

    result = workspace.launch(*args[:-6], "--resume")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    parents, after = _runs(client)
    trial_ids = [r.data.tags[TRIAL_TAG] for r in after]
    # The search reached its sample count with exactly one run per trial, and nothing is left RUNNING.
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(after) == SAMPLES and len(set(trial_ids)) == SAMPLES
    assert all(r.info.status in ("FINISHED", "FAILED") for r in after)
    for trial_id, run in finished_before.items():
        history = client.get_metric_history(run.info.run_id, "epoch")
        # A trial finished before the kill was not re-run: one metric point per epoch, no repeats.
        assert sorted(m.step for m in history) == list(range(1, len(history) + 1))
