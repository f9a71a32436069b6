"""``analyze.py --export-best`` -> ``launch.py --config``: the exported file trains and tests the winner again."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.helpers import CLS_ARGS, Workspace, runs_of, tail

pytestmark = pytest.mark.slow


def _history(client: MlflowClient, run_id: str, metric: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, metric), key=lambda m: m.step)]


def test_exported_best_config_trains_the_same_configuration(
    shared_workspace: Workspace, cls_launch: subprocess.CompletedProcess, synth_dir: Path, tmp_path: Path
) -> None:
    best = tmp_path / "best.yaml"
    exported = shared_workspace.analyze("--experiment", "whole_cls", "--out", str(tmp_path), "--export-best", str(best))
    assert exported.returncode == 0, tail(exported)
    seed = CLS_ARGS[CLS_ARGS.index("--seed") + 1]  # every trial is seeded by the launch's seed
    again = shared_workspace.launch(
        "--config", str(best), "--data", str(synth_dir), "--seed", seed, "--experiment", "roundtrip"
    )
    assert again.returncode == 0, tail(again)
    client = MlflowClient(shared_workspace.tracking_uri)
    source = runs_of(client, "whole_cls")[0][0]
    winner = client.get_run(source.data.tags["best_run_id"])
    parents, children = runs_of(client, "roundtrip")
    # One launch of one trial, whose parameters are the winner's, every one of them.
    assert len(parents) == 1 and len(children) == 1
    assert children[0].data.params == winner.data.params
    assert yaml.safe_load(best.read_text())["budget"] == {"max_epochs": int(children[0].data.tags["epochs_run"])}
    # Same configuration, seed and data: the epochs the winner ran are trained identically (CPU).
    ran = _history(client, winner.info.run_id, "val/loss")
    assert _history(client, children[0].info.run_id, "val/loss")[: len(ran)] == pytest.approx(ran, rel=1e-5)
    # The retrained configuration is tested on the test split, as the search's winner was.
    assert (
        {k for k in parents[0].data.metrics if k.startswith("test/")}
        == {k for k in source.data.metrics if k.startswith("test/")}
        != set()
    )
