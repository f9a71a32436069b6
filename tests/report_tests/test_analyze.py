"""``analyze.py`` on a small MLflow store built by the real ``launch.py`` (tiny synthetic searches).

The store is a copy of the session's shared store (conftest ``shared_workspace``) once its first
launches are in it (conftest ``first_launches``): ``whole_cls`` (``cls_launch``: 2 trials of at most 2
epochs) and ``other_data`` (1 trial of 1 epoch on a second synthetic set, generated with another seed),
so no search is run for this module; their artifacts stay where those launches logged them. To make
failed and stopped trials deterministic, the fixture then adds two child runs to the ``whole_cls``
launch by hand, written the way ``trainables/mlflow_trials.py`` writes them, and a copy of that
launch (same dataset) with perturbed test predictions as a second experiment to compare against.
Only the copy of the store changes: the shared launch stays as other tests expect it.
"""

from __future__ import annotations

import io
import math
import re
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from sklearn.metrics import accuracy_score

from medtune.report import cli as analyze
from medtune.report.load import PREDICTIONS, load_predictions
from medtune.tracking.store import LAUNCH_TAG, PARENT_TAG, artifact_location, experiment_id, latest_launch, trial_runs
from tests.helpers import Workspace

REPO = Path(__file__).resolve().parents[2]
FAILED_ERROR = "RuntimeError: fabricated failure for the report test"


@dataclass
class Store:
    root: Path
    uri: str
    parent: str  # the whole_cls launch
    stopped_run: str
    failed_run: str


def _fake_trial(client: MlflowClient, exp_id: str, parent: str, params: dict, *, status: str, tags: dict) -> str:
    """A child run as ``MLflowTrials`` records it: trial params, status tags, terminal state."""
    run = client.create_run(
        exp_id,
        run_name=f"fabricated_{status}",
        tags={PARENT_TAG: parent, "ray_trial_id": f"fake_{status}", "status": status, **tags},
    )
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    return run.info.run_id


def _add_trials(client: MlflowClient, exp_id: str, parent: str) -> tuple[str, str]:
    params = dict(trial_runs(client, exp_id, parent)[0].data.params)
    stopped = _fake_trial(
        client,
        exp_id,
        parent,
        {**params, "train.lr": "0.002"},
        status="stopped",
        tags={"epochs_run": "1", "stopped_early": "true"},
    )
    client.log_metric(stopped, "val/balanced_acc", 0.05, step=1)
    client.log_metric(stopped, "epoch", 1, step=1)
    client.set_terminated(stopped, "FINISHED")
    failed = _fake_trial(
        client,
        exp_id,
        parent,
        {**params, "train.lr": "0.0029"},
        status="failed",
        tags={
            "epochs_run": "0",
            "stopped_early": "false",
            "error": f"{FAILED_ERROR}\nTraceback (most recent call last): ...",
        },
    )
    client.set_terminated(failed, "FAILED")
    return stopped, failed


def _copy_launch(client: MlflowClient, parent: str, root: Path) -> None:
    """Experiment ``whole_cls_copy``: the same launch tags, with 3 test images the winner gets right predicted wrong."""
    source = client.get_run(parent)
    copy = client.create_experiment(
        "whole_cls_copy", artifact_location=artifact_location(client.tracking_uri, "whole_cls_copy")
    )
    run = client.create_run(
        copy,
        tags={
            k: v
            for k, v in source.data.tags.items()
            if k in (LAUNCH_TAG, "task", "space", "dataset", "dataset_fingerprint", "smoke")
        },
    )
    for key in ("metric", "mode"):
        client.log_param(run.info.run_id, key, source.data.params[key])
    preds = load_predictions(client, parent)
    labels, k = preds["labels"], preds["probs"].shape[1]
    # Three images the winner gets right, made wrong in every seed: the difference is never 0 (it was
    # when the first 3 images were already wrong, and a 0 may print as -0.000).
    flipped = np.flatnonzero(preds["probs"].argmax(1) == labels)[:3]
    assert len(flipped) == 3, "the shared whole_cls launch gets fewer than 3 test images right"
    changed = {}
    for key in ("probs", "probs_seeds"):
        if key in preds:
            probs = preds[key].copy()
            probs[..., flipped, :] = np.eye(k)[(labels[flipped] + 1) % k]
            changed[key] = probs
    path = root / "copy" / PREDICTIONS
    path.parent.mkdir()
    np.savez_compressed(path, **{**preds, **changed})
    client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id, "FINISHED")


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory, shared_workspace: Workspace, first_launches: dict) -> Store:
    root = tmp_path_factory.mktemp("analyze")
    shutil.copy(shared_workspace.root / "mlflow.db", root / "mlflow.db")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    exp_id = experiment_id(client, "whole_cls", create=False)
    parent = latest_launch(client, exp_id).info.run_id
    stopped, failed = _add_trials(client, exp_id, parent)
    _copy_launch(client, parent, root)
    return Store(root, uri, parent, stopped, failed)


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = analyze.main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def report(store: Store) -> tuple[Path, str, Path]:
    """The report of the whole_cls launch: its folder, the terminal output and the exported YAML."""
    out, best = store.root / "report", store.root / "best.yaml"
    code, text, err = _run(
        "--experiment", "whole_cls", "--tracking-uri", store.uri, "--out", str(out), "--export-best", str(best)
    )
    assert code == 0, err
    return out, text, best


@pytest.mark.slow
def test_report_files_exist_and_are_logged(store: Store, report: tuple[Path, str, Path]) -> None:
    out = report[0]
    expected = {
        "report.html",
        "optimisation_history.png",
        "learning_curves.png",
        "param_importance.png",
        "parallel_coordinates.png",
        "test_predictions.png",
        "saliency_overlays.png",
    }
    assert expected <= {p.name for p in out.iterdir()}
    # The same files are artifacts of the launch's parent run, under report/.
    logged = {Path(a.path).name for a in MlflowClient(store.uri).list_artifacts(store.parent, "report")}
    assert expected <= logged


@pytest.mark.slow
def test_html_is_self_contained(report: tuple[Path, str, Path]) -> None:
    page = (report[0] / "report.html").read_text()
    sources = re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']*)""", page)
    # Six plots (saliency overlays included), every one a data URI; no stylesheet, script or font is linked.
    assert len(sources) == 6 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page and "<script" not in page and "<link" not in page


def _table(text: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("rank "))
    rows = []
    for line in lines[start + 1 :]:
        if not line[:1].isdigit():
            break
        rows.append(line.split())
    return rows


@pytest.mark.slow
def test_leaderboard_order_follows_metric_and_mode(store: Store, report: tuple[Path, str, Path]) -> None:
    client = MlflowClient(store.uri)
    params = client.get_run(store.parent).data.params
    metric, mode = params["metric"], params["mode"]
    best = {}
    for run in trial_runs(client, experiment_id(client, "whole_cls", create=False), store.parent):
        values = [m.value for m in client.get_metric_history(run.info.run_id, metric)]
        best[run.info.run_id] = (max if mode == "max" else min)(values) if values else math.nan
    rows = _table(report[1])
    printed = [row[4] for row in rows]
    expected = sorted((v for v in best.values() if not math.isnan(v)), reverse=mode == "max")
    # Ranked by each trial's best epoch of the launch's metric, in its mode; the failed trial, with
    # no value ("-"), comes last.
    assert printed == [f"{v:.4f}" for v in expected] + ["-"]
    assert len(rows) == 4 and rows[-1][2] == "failed"


@pytest.mark.slow
def test_failed_and_stopped_trials_are_shown(report: tuple[Path, str, Path]) -> None:
    out, text, _ = report
    statuses = {row[1]: row[2] for row in _table(text)}
    assert statuses["fabricated_stopped"] == "stopped" and statuses["fabricated_failed"] == "failed"
    # The failed trial's error: first line only, in the terminal and in the page.
    assert f"failed: fabricated_failed: {FAILED_ERROR}\n" in text
    page = (out / "report.html").read_text()
    assert FAILED_ERROR in page and "Traceback" not in page
    assert '<tr class="stopped"><td>' in page and "stopped (ASHA)" in page and '<tr class="failed">' in page


@pytest.mark.slow
def test_export_best_is_the_winning_config(store: Store, report: tuple[Path, str, Path]) -> None:
    exported = yaml.safe_load(report[2].read_text())
    client = MlflowClient(store.uri)
    winner = client.get_run(client.get_run(store.parent).data.tags["best_run_id"])
    assert exported["space"] == "whole_cls" and exported["task"] == "classification"
    # Typed values (floats stay floats, ints ints) that print back to the logged strings.
    assert {k: str(v) for k, v in exported["config"].items()} == winner.data.params
    assert isinstance(exported["config"]["train.lr"], float) and exported["config"]["data.image_size"] == 32
    assert exported["budget"] == {"max_epochs": 2}


@pytest.mark.slow
def test_few_trials_report_importance_as_unavailable(store: Store) -> None:
    out = store.root / "report_other"
    code, text, err = _run("--experiment", "other_data", "--tracking-uri", store.uri, "--out", str(out))
    assert code == 0, err
    # One trial: fANOVA is not run, the page says so, the other plots are still drawn.
    assert "parameter importance not available: 1 finished trial(s)" in text
    assert not (out / "param_importance.png").exists() and (out / "learning_curves.png").is_file()
    assert "not available" in (out / "report.html").read_text()


@pytest.mark.slow
def test_compare_same_dataset(store: Store) -> None:
    out = store.root / "compare"
    code, text, err = _run("--compare", "whole_cls", "whole_cls_copy", "--tracking-uri", store.uri, "--out", str(out))
    assert code == 0, err
    client = MlflowClient(store.uri)
    preds = load_predictions(client, store.parent)
    copy = load_predictions(
        client, latest_launch(client, experiment_id(client, "whole_cls_copy", create=False)).info.run_id
    )

    def accuracy(p: dict) -> float:  # the mean over seeds, as compare's values
        seeds = p["probs_seeds"] if "probs_seeds" in p else p["probs"][None]
        return float(np.mean([accuracy_score(p["labels"], probs.argmax(1)) for probs in seeds]))

    diff = accuracy(copy) - accuracy(preds)
    assert diff < 0
    # The copy's accuracy difference (3 right images made wrong) is in its row, with an interval.
    assert re.search(rf"whole_cls_copy .*\(diff {diff:+.3f} \[", text)
    assert (out / "compare.html").is_file() and (out / "compare.png").is_file()


@pytest.mark.slow
def test_compare_refuses_different_datasets(store: Store) -> None:
    code, text, err = _run("--compare", "whole_cls", "other_data", "--tracking-uri", store.uri)
    assert code == 2 and text == ""
    assert (
        err.startswith("error: cannot compare: the latest launches are on different datasets") and err.count("\n") == 1
    )


@pytest.mark.slow
def test_unknown_experiment_fails_clearly(store: Store) -> None:
    done = subprocess.run(
        [sys.executable, "analyze.py", "--experiment", "nope", "--tracking-uri", store.uri],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    existing = sorted(e.name for e in MlflowClient(store.uri).search_experiments() if e.name != "Default")
    # One line naming the existing experiments (the shared store's, copied, and this module's), no traceback.
    assert done.returncode == 2 and done.stdout == "" and {"other_data", "whole_cls", "whole_cls_copy"} <= set(existing)
    assert done.stderr == f"error: unknown experiment 'nope'; existing: {', '.join(existing)}\n"


@pytest.mark.slow
def test_launch_of_another_experiment_is_refused(store: Store) -> None:
    code, _, err = _run("--experiment", "other_data", "--launch", store.parent, "--tracking-uri", store.uri)
    assert code == 2 and "not a launch (parent run) of experiment 'other_data'" in err
