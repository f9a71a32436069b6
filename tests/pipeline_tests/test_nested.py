"""Nested cross-validation end to end (``launch.py --outer-folds``, then ``analyze.py``), real Ray, MLflow, registry.

Two nested launches on the same 2 outer folds of the session's 48-image synthetic set: ``nested``
(inner 2-fold cross-validation, no refit), interrupted with SIGINT inside its second outer fold
and resumed, and ``nested_b`` (one trial per outer fold, an inner val split, then the refit: the same
one-trial search on the dataset's own splits). Every image must be predicted once,
by the winner of a search whose datasets never held it; the runs must nest launch -> outer fold ->
trial; the resume must skip the finished fold and finish the other; ``--compare`` must pair all 48.
"""

from __future__ import annotations

import io
import json
import os
import signal
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from medtune.data.coco import SPLITS, resolve_dataset
from medtune.publish.nested import OUTER_TAG, STAGE_TAG
from medtune.report import nested as report_nested
from medtune.report.cli import main as analyze_main
from medtune.tracking.store import LAUNCH_TAG, PARENT_TAG, read_artifact
from tests.helpers import tail

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.shared_ray]  # launches join the Ray head (conftest)

# A tiny classifier and one searched key: the test is about the nesting, not the model.
SPACE = """# nested test space
task: classification
metric: val/balanced_acc
mode: max
fixed: {data.image_size: 32, data.batch_size: 8, loss.name: ce, model.name: mobilenet_v3_small, train.saliency_metric: false}
params:
  train.lr: {loguniform: [3.0e-4, 3.0e-3]}
budget: {num_samples: 2, max_epochs: 1, grace_period: 1, reduction_factor: 2}
"""


def _space(workspace, name: str, text: str = SPACE) -> str:
    path = workspace.root / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def _client(workspace) -> MlflowClient:
    """The workspace's store for runs and registry alike (another module may have set MLflow's registry URI)."""
    return MlflowClient(workspace.tracking_uri, registry_uri=workspace.tracking_uri)


def _runs(client: MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000) if exp else []


def _launch_run(runs: list):
    (launch,) = [r for r in runs if r.data.tags.get(LAUNCH_TAG) == "true"]
    return launch


def _outer_runs(runs: list, launch_id: str) -> dict[int, object]:
    stages = [r for r in runs if r.data.tags.get(PARENT_TAG) == launch_id and r.data.tags.get(STAGE_TAG) == "outer"]
    return {int(r.data.tags[OUTER_TAG]): r for r in stages}


def _pooled(client: MlflowClient, launch_id: str) -> dict[str, np.ndarray]:
    arrays = report_nested.predictions(client, client.get_run(launch_id))
    assert arrays is not None, "the nested launch logged no outer_predictions.npz"
    return arrays


def _all_ids(data: Path) -> list[int]:
    dataset = resolve_dataset(data, cache_root=data.parent / "unused")
    return sorted(int(img["id"]) for s in SPLITS for img in json.loads(dataset.coco_files[s].read_text())["images"])


def _check_out_of_sample(client: MlflowClient, runs: list, launch_id: str, data: Path) -> None:
    """Every image predicted exactly once, by the outer fold whose search's splits never held it."""
    arrays = _pooled(client, launch_id)
    assert sorted(arrays["image_ids"].tolist()) == _all_ids(data)
    outer = _outer_runs(runs, launch_id)
    assert sorted(outer) == [0, 1]
    for k, run in outer.items():
        predicted = set(arrays["image_ids"][arrays["outer_fold"] == k].tolist())
        fold_data = Path(run.data.tags["dataset"])  # the outer fold's dataset folder, as its search used it
        seen = {
            img["id"] for s in ("train", "val") for img in json.loads((fold_data / f"{s}.json").read_text())["images"]
        }
        tested = {img["id"] for img in json.loads((fold_data / "test.json").read_text())["images"]}
        assert predicted and not predicted & seen, f"outer fold {k} predicted images its search trained on"
        assert predicted == tested
        trials = [r for r in runs if r.data.tags.get(PARENT_TAG) == run.info.run_id]
        assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials)  # launch -> outer fold -> trial


def _interrupt_in_outer_fold_1(workspace, client: MlflowClient, experiment: str, args: list[str]) -> tuple:
    """Start the launch, SIGINT it once a trial of outer fold 1 has started; its exit code, output and runs."""
    log = workspace.root / f"{experiment}.log"
    proc = workspace.start_launch(*args, log=log)
    deadline = time.time() + 400
    while time.time() < deadline:
        runs = _runs(client, experiment)
        stages = {r.data.tags.get(OUTER_TAG): r for r in runs if r.data.tags.get(STAGE_TAG) == "outer"}
        second = stages.get("1")
        if second and any(r.data.tags.get(PARENT_TAG) == second.info.run_id for r in runs):
            break  # outer fold 0 finished, the first of fold 1's two trials has started (one at a time)
        if proc.poll() is not None:
            pytest.fail(
                f"the launch ended (exit {proc.returncode}) before outer fold 1 started:\n{log.read_text()[-4000:]}"
            )
        time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"outer fold 1 did not start within 400 s:\n{log.read_text()[-4000:]}")
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=300)
    return proc.returncode, log.read_text(), _runs(client, experiment)


@pytest.fixture(scope="module")
def nested(workspace, synth_dir: Path):
    """``--outer-folds 2 --folds 2 --no-refit``, two trials per search one at a time, interrupted (SIGINT) once outer
    fold 1's search runs, then ``--resume``d: what the interrupted launch left, the resume's output, the runs."""
    space = _space(workspace, "nested")
    args = ["--space", space, "--data", str(synth_dir), "--outer-folds", "2", "--folds", "2", "--max-concurrent", "1"]
    args.append("--no-refit")  # the refit is nested_b's (one trial): here it would cost a third cross-validated search
    client = _client(workspace)
    interrupted = _interrupt_in_outer_fold_1(workspace, client, "nested", args)
    result = workspace.launch(*args, "--resume")
    assert result.returncode == 0, tail(result)
    return interrupted, result, _runs(client, "nested")


@pytest.fixture(scope="module")
def nested_b(workspace, synth_dir: Path, nested):
    """A second nested launch on the same outer folds (same data, K and seed): one trial per outer fold, an
    inner val split, then the refit (one trial on the dataset's own splits)."""
    space = _space(workspace, "nested_b")
    args = ["--space", space, "--data", str(synth_dir), "--outer-folds", "2", "--num-samples", "1"]
    result = workspace.launch(*args)
    assert result.returncode == 0, tail(result)
    return args, _runs(_client(workspace), "nested_b")


def _analyze(workspace, *argv: str) -> str:
    """``analyze.py`` in this process (its imports paid once): its standard output; exit 0 asserted."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = analyze_main([*argv, "--tracking-uri", workspace.tracking_uri, "--out", str(workspace.root / "report")])
    assert code == 0, err.getvalue()[-3000:]
    return out.getvalue()


def _text(client: MlflowClient, run_id: str, path: str) -> str:
    data = read_artifact(client, run_id, path)
    assert data is not None, f"run {run_id} has no {path}"
    return data.decode()


def test_every_image_is_predicted_once_by_a_search_that_never_saw_it(workspace, nested, synth_dir: Path) -> None:
    _, result, runs = nested
    client = _client(workspace)
    launch = _launch_run(runs)
    assert launch.info.status == "FINISHED" and launch.data.tags["nested_outer_folds"] == "2"
    _check_out_of_sample(client, runs, launch.info.run_id, synth_dir)
    # The pooled metrics over all 48 images, with their intervals, on the run and the terminal.
    metrics = launch.data.metrics
    assert metrics["nested/balanced_acc_low"] <= metrics["nested/balanced_acc"] <= metrics["nested/balanced_acc_high"]
    assert {f"outer/fold{k}/test/balanced_acc" for k in (0, 1)} <= set(metrics)
    assert "2 outer folds over 48 images" in result.stdout and "bootstrap over 48 images" in result.stdout
    winners = json.loads(_text(client, launch.info.run_id, "outer_winners.json"))
    assert [w["fold"] for w in winners] == [0, 1] and all("train.lr" in w["config"] for w in winners)
    assert not [r for r in runs if r.data.tags.get(STAGE_TAG) == "refit"]  # --no-refit


def test_the_refit_is_registered_with_the_nested_estimate_on_its_card(workspace, nested_b) -> None:
    _, runs = nested_b
    client = _client(workspace)
    launch = _launch_run(runs)
    (refit,) = [r for r in runs if r.data.tags.get(STAGE_TAG) == "refit"]
    assert refit.data.tags[PARENT_TAG] == launch.info.run_id and refit.info.status == "FINISHED"
    assert refit.data.tags["nested_estimate"].endswith("over 48 images in 2 outer folds")
    # Only the refit is registered: the outer folds' classifiers are logged on their runs, not in the registry.
    names = [m.name for m in client.search_registered_models()]
    assert [n for n in names if n.startswith("nested_b-")] and not [n for n in names if "outer" in n], names
    card = _text(client, refit.info.run_id, "model_card.md")
    assert (
        "How well the procedure does (nested cross-validation)" in card and refit.data.tags["nested_estimate"] in card
    )


def test_resume_after_sigint_continues_at_the_unfinished_outer_fold(workspace, nested) -> None:
    (code, output, before), result, runs = nested
    assert code == 130, output[-3000:]
    launch_before = _launch_run(before)
    assert launch_before.info.status == "KILLED"
    finished_before = _outer_runs(before, launch_before.info.run_id)[0]
    assert finished_before.info.status == "FINISHED"
    assert "outer-0: finished before; skipped" in result.stderr and "outer-1: resuming its search" in result.stderr
    launch = _launch_run(runs)
    assert launch.info.run_id == launch_before.info.run_id and launch.info.status == "FINISHED"
    assert _outer_runs(runs, launch.info.run_id)[0].info.run_id == finished_before.info.run_id  # not searched again


def test_resume_of_a_nested_launch_without_outer_folds_says_how(workspace, nested_b, synth_dir: Path) -> None:
    plain = workspace.launch("--space", str(workspace.root / "nested_b.yaml"), "--data", str(synth_dir), "--resume")
    assert plain.returncode == 2, tail(plain)
    assert "is nested; resume it with --outer-folds 2" in plain.stderr and "Traceback" not in plain.stderr


def test_compare_pairs_every_image_of_two_nested_launches(workspace, nested, nested_b) -> None:
    text = _analyze(workspace, "--compare", "nested", "nested_b")
    assert "all 48 images, each predicted by the winner of an outer fold's search that never saw it" in text
    assert "metrics re-computed from outer_predictions.npz" in text
    assert "these scores chose nothing" in text  # the fold-wise test on the outer folds
    assert "optimistic" not in text


def test_analyze_reports_the_nested_result_then_the_refit(workspace, nested_b) -> None:
    text = _analyze(workspace, "--experiment", "nested_b")
    assert "== nested cross-validation of nested_b: 2 outer folds over 48 images" in text
    assert "-- the refit: the same search on the dataset's own splits" in text
