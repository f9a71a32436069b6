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


def _runs(client: MlflowClient, experiment: str) -> tuple[list, list]:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return [], []
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get(LAUNCH_TAG) == "true"], [r for r in runs if PARENT_TAG in r.data.tags]


def start_and_interrupt(workspace, synth_dir: Path, sig: int) -> tuple[list[str], subprocess.Popen]:
    """Start a 4-trial search, wait until one trial finished and the next runs, then send ``sig``."""
    args = ["--space", "whole_cls", "--smoke", "--data", str(synth_dir), "--num-samples", str(SAMPLES),
            "--max-epochs", "5", "--max-concurrent", "1", "--experiment", f"whole_cls_{sig}",
            "--tracking-uri", workspace.tracking_uri,
            "--storage-path", str(workspace.root / "runs"), "--cache-dir", str(workspace.root / "cache")]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "launch.py", *args], cwd=PROJECT_DIR, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client = MlflowClient(workspace.tracking_uri)
    deadline = time.time() + 300
    while time.time() < deadline:
        _, children = _runs(client, f"whole_cls_{sig}")
        if any(r.info.status == "FINISHED" for r in children) and any(r.info.status == "RUNNING" for r in children):
            break
        assert proc.poll() is None, "the launcher ended before it could be interrupted"
        time.sleep(1)
    time.sleep(1)  # a checkpoint forces an experiment snapshot; give the running trial one epoch
    os.killpg(proc.pid, sig)  # the whole process group, as a terminal's Ctrl-C or a kill -9 of the job
    proc.wait(timeout=300)
    return args, proc


def resume_and_check(workspace, args: list[str], experiment: str) -> list:
    result = workspace.launch(*args[:-6], "--resume")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    parents, after = _runs(MlflowClient(workspace.tracking_uri), experiment)
    trial_ids = [r.data.tags[TRIAL_TAG] for r in after]
    # The search reached its sample count with exactly one run per trial, and nothing is left RUNNING.
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(after) == SAMPLES and len(set(trial_ids)) == SAMPLES
    assert all(r.info.status in ("FINISHED", "FAILED") for r in after)
    return after


def test_sigint_stops_cleanly_and_resumes(workspace, synth_dir: Path) -> None:
    args, proc = start_and_interrupt(workspace, synth_dir, signal.SIGINT)
    stderr = proc.stderr.read()
    # Ctrl-C: exit 130 with the resume command, the launch and its unfinished trials marked KILLED.
    assert proc.returncode == 130, stderr[-2000:]
    assert "--resume" in stderr
    parents, children = _runs(MlflowClient(workspace.tracking_uri), f"whole_cls_{signal.SIGINT}")
    assert parents[0].info.status == "KILLED" and not [r for r in children if r.info.status == "RUNNING"]
    resume_and_check(workspace, args, f"whole_cls_{signal.SIGINT}")


def test_sigkill_then_resume(workspace, synth_dir: Path) -> None:
    args, _ = start_and_interrupt(workspace, synth_dir, signal.SIGKILL)
    client = MlflowClient(workspace.tracking_uri)
    experiment = f"whole_cls_{signal.SIGKILL}"
    _, before = _runs(client, experiment)
    finished_before = {r.data.tags[TRIAL_TAG]: r for r in before if r.info.status == "FINISHED"}
    # The kill came after a finished trial and before the search ended.
    assert finished_before and len(finished_before) < SAMPLES
    print(f"kill/resume: {len(before)} runs ({len(finished_before)} finished) before, ", end="")
    after = resume_and_check(workspace, args, experiment)
    print(f"{len(after)} runs after, {len({r.data.tags[TRIAL_TAG] for r in after})} distinct trials")
    for trial_id, run in finished_before.items():
        history = client.get_metric_history(run.info.run_id, "epoch")
        # A trial finished before the kill was not re-run: one metric point per epoch, no repeats.
        assert sorted(m.step for m in history) == list(range(1, len(history) + 1))
