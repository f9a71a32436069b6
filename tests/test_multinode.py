"""A real two-node Ray cluster on this machine: trials are spread over both nodes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import Workspace
from tests.test_resilience import free_port, runs_of

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).parent / "ray")
# Four 4-epoch trials at 64 px, all started at once by the grid (TPE's one-at-a-time smoke trials
# are so short that one reused actor can run them all before a second worker has started).
SPACE = """
task: classification
metric: val/balanced_acc
mode: max
search: grid
fixed: {data.image_size: 64, data.batch_size: 8, loss.name: ce, model.name: resnet18, train.saliency_metric: false}
params:
  train.lr: {choice: [0.001, 0.002, 0.003, 0.004]}
budget: {max_epochs: 4}
"""


def ray_cmd(*args: str, env: dict) -> None:
    subprocess.run([RAY, *args], check=True, capture_output=True, text=True, env=env, timeout=180)


@pytest.fixture
def two_node_cluster(tmp_path: Path):
    port = free_port()
    temp_dir = Path("/tmp") / f"ray-mt-{port}"  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    ray_cmd(
        "start",
        "--head",
        f"--port={port}",
        "--num-cpus=1",
        "--num-gpus=0",
        "--include-dashboard=false",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        env=env,
    )
    address = f"127.0.0.1:{port}"
    try:
        ray_cmd("start", f"--address={address}", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats", env=env)
        yield address
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, env=env, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_trials_run_on_both_nodes(two_node_cluster: str, synth_dir: Path, tmp_path: Path) -> None:
    workspace = Workspace(tmp_path)
    # The workspace's storage folder is on this machine, so both nodes reach it (NFS/S3 on a real cluster).
    space = tmp_path / "grid.yaml"
    space.write_text(SPACE)
    result = workspace.launch(
        "--space",
        str(space),
        "--data",
        str(synth_dir),
        "--address",
        two_node_cluster,
        "--cpus-per-trial",
        "1",
        "--experiment",
        "multinode",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _, children = runs_of(MlflowClient(workspace.tracking_uri), "multinode")
    nodes = {r.data.tags.get("node_id") for r in children}
    # Each node offers one CPU and each trial needs one, so the trials ran on both nodes.
    assert len(children) == 4 and len(nodes) == 2 and "" not in nodes, result.stdout[-4000:]
