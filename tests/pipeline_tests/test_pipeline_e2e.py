"""End to end through the real CLIs: segmentation -> champion -> masked_cls -> analyze.

Ray, Optuna (TPE), ASHA, Lightning, MLflow tracking and the model registry are all real; only the
sizes are tiny (48 images at 32 px, 2 trials of at most 2 epochs per search). The two searches are
the session's shared launches (conftest ``seg_launch``, ``masked_launch``), which other tests read too.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from medtune.data.coco import resolve_dataset
from medtune.tracking.registry import champion, segmenter_name
from tests.helpers import Workspace, runs_of

pytestmark = pytest.mark.e2e  # launches, Ray or a real server: run by ./test.sh, skipped by -m 'not e2e'


def test_masked_cls_without_champion_fails_fast(workspace, synth_dir: Path) -> None:
    result = workspace.launch("--space", "masked_cls", "--smoke", "--data", str(synth_dir), timeout=120)
    # One clear line naming the command that creates a champion, no traceback, nothing logged.
    assert result.returncode == 2, result.stderr
    assert "python launch.py --space segmentation" in result.stderr
    assert "Traceback" not in result.stderr
    client = MlflowClient(workspace.tracking_uri)
    assert client.get_experiment_by_name("masked_cls") is None


@pytest.mark.slow
def test_segmentation_then_masked_cls_then_analyze(
    shared_workspace: Workspace,
    seg_launch: subprocess.CompletedProcess,
    masked_launch: subprocess.CompletedProcess,
    synth_dir: Path,
) -> None:
    workspace = shared_workspace
    client = MlflowClient(workspace.tracking_uri)
    parents, children = runs_of(client, "segmentation")
    # One parent per launch and one child per trial (smoke: 2 samples), none left RUNNING.
    assert len(parents) == 1 and len(children) == 2
    assert all(r.info.status in ("FINISHED", "FAILED") for r in parents + children)
    assert "test/iou" in parents[0].data.metrics
    assert all("epochs_run" in r.data.tags and "ray_trial_id" in r.data.tags for r in children)
    # A sqlite store keeps its artifacts (the logged model among them) beside its file, not in ./mlruns.
    location = client.get_experiment_by_name("segmentation").artifact_location
    assert location == (workspace.root / "mlruns" / "segmentation").as_uri()
    assert any((workspace.root / "mlruns" / "segmentation").rglob("MLmodel"))

    dataset = resolve_dataset(synth_dir, cache_root=workspace.root / "cache")
    name = segmenter_name(dataset.name, dataset.fingerprint)
    version = champion(client, name)
    # The first segmenter of a dataset always becomes its champion.
    assert version is not None and version.tags["run_id"] == parents[0].data.tags["best_run_id"]

    parents, children = runs_of(client, "masked_cls")
    assert len(parents) == 1 and len(children) == 2
    # Every masked trial records which segmenter version produced its masks.
    assert {r.data.tags.get("segmenter_version") for r in children} == {f"{name}/{version.version}"}
    assert "test/balanced_acc" in parents[0].data.metrics
    # Its masks are cached under the segmenter's name, version and weights (run id), computed once.
    assert [p.name.rsplit("-", 1)[0] for p in (workspace.root / "cache" / "masks").iterdir()] == [
        f"{name}-v{version.version}"
    ]

    report = workspace.analyze("--experiment", "masked_cls", "--out", str(workspace.root / "report"))
    assert report.returncode == 0, report.stderr[-3000:]
    # The leaderboard names both trials and the objective.
    assert "val/balanced_acc" in report.stdout
    assert all(r.info.run_name[:30] in report.stdout for r in children)

    nope = workspace.analyze("--experiment", "nope")
    assert nope.returncode != 0 and "Traceback" not in nope.stderr
    # The error lists the experiments that exist.
    assert "segmentation" in nope.stderr and "masked_cls" in nope.stderr
