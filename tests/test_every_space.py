"""Every file in search_spaces/ smoke-runs through the real launch.py (segmentation and masked_cls
run in test_pipeline_e2e.py, which needs their order: champion first)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from medtune.spaces import available, load_space
from tests.test_resilience import runs_of

pytestmark = pytest.mark.slow
COVERED_ELSEWHERE = {"segmentation", "masked_cls"}


@pytest.fixture(scope="module")
def multilabel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medtune.data.synth import generate

    out = tmp_path_factory.mktemp("synth_ml") / "data"
    generate(out, n=48, size=32, seed=0, multilabel=True)
    return out


@pytest.mark.parametrize("name", sorted(set(available()) - COVERED_ELSEWHERE))
def test_space_smoke_runs(name: str, workspace, synth_dir: Path, multilabel_dir: Path) -> None:
    space = load_space(name, smoke=True)
    data = multilabel_dir if space.task == "multilabel_classification" else synth_dir
    result = workspace.launch("--space", name, "--smoke", "--data", str(data), "--experiment", f"smoke_{name}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    parents, children = runs_of(MlflowClient(workspace.tracking_uri), f"smoke_{name}")
    # One finished launch with a child per trial and the best trial's test metrics.
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == space.budget["num_samples"]
    assert any(key.startswith("test/") for key in parents[0].data.metrics)


def test_same_seed_same_configs_and_metrics(workspace, synth_dir: Path) -> None:
    args = ["--space", "whole_cls", "--smoke", "--data", str(synth_dir), "--seed", "7", "--max-concurrent", "1"]
    first = workspace.launch(*args, "--experiment", "repro_a")
    second = workspace.launch(*args, "--experiment", "repro_b")
    assert first.returncode == 0 and second.returncode == 0, first.stderr[-2000:] + second.stderr[-2000:]
    client = MlflowClient(workspace.tracking_uri)
    runs = [sorted(runs_of(client, name)[1], key=lambda r: r.info.start_time) for name in ("repro_a", "repro_b")]
    # The sampler proposes the same configurations in the same order, and on CPU they train identically.
    assert [r.data.params for r in runs[0]] == [r.data.params for r in runs[1]]
    for a, b in zip(*runs):
        assert a.data.metrics["val/loss"] == pytest.approx(b.data.metrics["val/loss"], rel=1e-5)
    parents = [runs_of(client, name)[0][0] for name in ("repro_a", "repro_b")]
    # Each parent run records what is needed to reproduce it.
    for parent in parents:
        assert {"code_version", "dataset_fingerprint"} <= set(parent.data.tags)
        assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
            "search_space.yaml",
            "versions.json",
            "resolved_space.json",
        }
