"""Kill the launcher mid-search, resume it: no trial re-run, one MLflow run per trial, none RUNNING.

Under the checkpoint policy (``trainables.checkpoint_policy``) a trial running at the kill resumes from
its latest checkpoint, which may be older than its last logged epoch: the epochs after it are
trained again, and each epoch is still logged once.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from medtune.tracking.store import LAUNCH_TAG, PARENT_TAG, TRIAL_TAG

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
SAMPLES = 3


def _runs(client: MlflowClient, experiment: str) -> tuple[list, list]:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return [], []
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get(LAUNCH_TAG) == "true"], [r for r in runs if PARENT_TAG in r.data.tags]


# Three trials one at a time, each trained for all its epochs (grace = max epochs: ASHA stops none),
# so there is always a window where one trial has finished and the next is running. A small network
# (its checkpoint about 7 times smaller than resnet18's): the test is about the search, not the model.
SPACE = """
task: classification
metric: val/balanced_acc
mode: max
fixed: {data.image_size: 32, data.batch_size: 8, loss.name: ce, model.name: mobilenet_v3_small, train.saliency_metric: false}
params:
  train.lr: {loguniform: [3.0e-4, 3.0e-3]}
budget: {num_samples: 3, max_epochs: 3, grace_period: 3, reduction_factor: 2}
"""
# The same search cross-validated on 2 folds (each round trains both): 2 trials of 6 rounds. The
# signal goes out once the second trial, the last of the search, has logged its first round, leaving
# it 5 rounds: MLflow shows a trial's rounds only after Ray has them, and on a 2-core CI machine a
# search of 2-round trials ended within the second the test used to wait (it exited 0, not 130).
# The last trial: Tune returns the trials a stop signal ended as terminated, so with every sample
# drawn the launch once took the search for finished and published the half-trained trial (exit 0).
CV_ROUNDS = 6
CV_SAMPLES = 2
CV_SPACE = SPACE.replace(
    "num_samples: 3, max_epochs: 3, grace_period: 3",
    f"num_samples: {CV_SAMPLES}, max_epochs: {CV_ROUNDS}, grace_period: {CV_ROUNDS}",
)
CV_SPACE += "cv: {folds: 2}\n"
# The SIGKILL case waits for a running trial's second epoch and kills at once: 8 epochs leave it 6
# (several seconds) to be killed mid-way. On a 2-core CI machine 3 epochs passed in the second the
# test used to wait.
KILL_EPOCHS = 8
KILL_SPACE = SPACE.replace("max_epochs: 3, grace_period: 3", f"max_epochs: {KILL_EPOCHS}, grace_period: {KILL_EPOCHS}")
# Ray snapshots the experiment (what --resume restores) every 10 s or more; a checkpoint newer than
# the last snapshot is not resumed from. Snapshotting every step makes the trial's first checkpoint
# known before its second epoch is logged, so the kill below lands after it.
SNAPSHOT_EVERY_STEP = {"TUNE_GLOBAL_CHECKPOINT_S": "0"}


def start_and_interrupt(
    workspace,
    synth_dir: Path,
    sig: int,
    text: str = SPACE,
    epochs: int = 0,
    settle_s: float = 1.0,
    env: dict[str, str] | None = None,
) -> tuple[list[str], int, str]:
    """Start the search of space ``text`` (``env`` added to the launcher's environment), wait until one
    trial finished and the next runs (with ``epochs`` epochs logged), wait ``settle_s``, then send ``sig``.

    Returns the launch arguments, the launcher's exit code and its output.
    """
    space = workspace.root / f"resume_space_{int(sig)}.yaml"
    space.write_text(text)
    experiment = f"whole_cls_{int(sig)}"
    args = ["--space", str(space), "--data", str(synth_dir), "--max-concurrent", "1", "--experiment", experiment]
    client = MlflowClient(workspace.tracking_uri)
    client.search_experiments()  # create the store's tables now, not while the launcher opens it
    log = workspace.root / f"launch-{int(sig)}.log"
    proc = workspace.start_launch(*args, log=log, env=env)
    deadline = time.time() + 300
    while time.time() < deadline:
        _, children = _runs(client, experiment)
        running = [r for r in children if r.info.status == "RUNNING" and r.data.metrics.get("epoch", 0) >= epochs]
        if any(r.info.status == "FINISHED" for r in children) and running:
            break
        if proc.poll() is not None:
            pytest.fail(
                f"the launcher ended (exit {proc.returncode}) before it could be interrupted:\n{log.read_text()[-4000:]}"
            )
        time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"no trial finished while another ran within 300 s:\n{log.read_text()[-4000:]}")
    time.sleep(settle_s)  # e.g. let the running trial report (and checkpoint) an epoch, so it resumes from one
    os.killpg(proc.pid, sig)  # the whole process group, as a terminal's Ctrl-C or a kill -9 of the job
    proc.wait(timeout=300)
    return args, proc.returncode, log.read_text()


def resume_and_check(workspace, args: list[str], experiment: str, samples: int = SAMPLES) -> list:
    result = workspace.launch(*args, "--resume")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    parents, after = _runs(MlflowClient(workspace.tracking_uri), experiment)
    trial_ids = [r.data.tags[TRIAL_TAG] for r in after]
    # The search reached its sample count with exactly one run per trial, and nothing is left RUNNING.
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(after) == samples and len(set(trial_ids)) == samples
    assert all(r.info.status in ("FINISHED", "FAILED") for r in after)
    url, name = parents[0].data.tags["optuna_storage"], parents[0].data.tags["optuna_study"]
    # The resume continued the launch's own study: no second study, one told Optuna trial per trial run.
    assert [n for n in optuna.get_all_study_names(url) if n.startswith(experiment)] == [name]
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    assert sorted(t.user_attrs["ray_trial_id"] for t in trials) == sorted(trial_ids)
    assert all(t.state.is_finished() and t.intermediate_values for t in trials)
    return after


def test_sigint_stops_cleanly_and_resumes_a_cross_validated_search(workspace, synth_dir: Path) -> None:
    args, code, output = start_and_interrupt(workspace, synth_dir, signal.SIGINT, CV_SPACE, epochs=1, settle_s=0.0)
    # Ctrl-C: exit 130 with the resume command, the launch and its unfinished trials marked KILLED.
    assert code == 130, output[-2000:]
    assert "--resume" in output
    parents, children = _runs(MlflowClient(workspace.tracking_uri), f"whole_cls_{int(signal.SIGINT)}")
    assert parents[0].info.status == "KILLED" and not [r for r in children if r.info.status == "RUNNING"]
    assert len(children) == CV_SAMPLES and "promoted" not in output  # the last trial ran: nothing was published
    after = resume_and_check(workspace, args, f"whole_cls_{int(signal.SIGINT)}", samples=CV_SAMPLES)
    client = MlflowClient(workspace.tracking_uri)
    for run in after:  # every round once per trial, with both folds' scores: none missing, none twice
        for key in ("epoch", "cv/fold0/val/balanced_acc", "cv/fold1/val/balanced_acc"):
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert steps == list(range(1, CV_ROUNDS + 1)), (key, steps)


def test_sigkill_then_resume(workspace, synth_dir: Path) -> None:
    # The running trial has logged 2 epochs: Ray has snapshotted its first checkpoint (epoch 1, a new best).
    args, _, _ = start_and_interrupt(
        workspace, synth_dir, signal.SIGKILL, KILL_SPACE, epochs=2, settle_s=0.0, env=SNAPSHOT_EVERY_STEP
    )
    client = MlflowClient(workspace.tracking_uri)
    experiment = f"whole_cls_{int(signal.SIGKILL)}"
    _, before = _runs(client, experiment)
    finished_before = {r.data.tags[TRIAL_TAG]: r for r in before if r.info.status == "FINISHED"}
    # The kill came after a finished trial and before the search ended.
    assert finished_before and len(finished_before) < SAMPLES
    print(f"kill/resume: {len(before)} runs ({len(finished_before)} finished) before, ", end="")
    after = resume_and_check(workspace, args, experiment)
    print(f"{len(after)} runs after, {len({r.data.tags[TRIAL_TAG] for r in after})} distinct trials")
    for run in finished_before.values():
        history = client.get_metric_history(run.info.run_id, "epoch")
        # A trial finished before the kill was not re-run: one metric point per epoch, no repeats.
        assert sorted(m.step for m in history) == list(range(1, len(history) + 1))
    running = [r for r in before if r.info.status != "FINISHED" and r.data.metrics.get("epoch", 0) >= 2]
    assert running, [(r.info.status, r.data.metrics.get("epoch")) for r in before]
    by_trial = {r.data.tags[TRIAL_TAG]: r for r in after}
    for run in running:
        resumed = by_trial[run.data.tags[TRIAL_TAG]]
        # It went on from a checkpoint, not from scratch, and ran to the end of its budget ...
        assert int(resumed.data.tags.get("resumed_from_epoch", 0)) >= 1, resumed.data.tags
        assert resumed.data.tags["epochs_run"] == str(KILL_EPOCHS) and resumed.info.status == "FINISHED"
        # ... with every epoch logged once, those trained again after the kill included.
        for key in ("epoch", "val/loss", "val/balanced_acc"):
            steps = sorted(m.step for m in client.get_metric_history(resumed.info.run_id, key))
            assert steps == list(range(1, KILL_EPOCHS + 1)), (key, steps)
