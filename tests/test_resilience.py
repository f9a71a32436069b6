"""Searches that survive: failing trials, concurrent logging, a tracking server, safe loading."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from medtune.evaluate import load_system
from tests.helpers import Workspace, free_port, runs_of

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
        "12",
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
    # 12 one-epoch trials, 4 at a time (three waves finishing together): every run is there, finished,
    # with every metric.
    assert len(children) == 12 and all(r.info.status == "FINISHED" for r in children)
    assert missing == []
    print(f"load test: 12 trials in {minutes:.2f} min = {12 / minutes:.1f} trials/min, lost metrics: {len(missing)}")


@pytest.fixture
def mlflow_server(tmp_path: Path):
    port = free_port()
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination",
        str(tmp_path / "artifacts"),
        "--workers",
        "1",
    ]
    server = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("mlflow server did not answer /health within 60 s")
    yield url
    server.terminate()
    server.wait(timeout=30)


@pytest.mark.slow
def test_search_against_a_real_tracking_server(mlflow_server: str, synth_dir: Path, tmp_path: Path) -> None:
    workspace = Workspace(tmp_path)
    workspace.tracking_uri = mlflow_server
    args = ("--smoke", "--num-samples", "1", "--max-epochs", "1")  # plumbing: one trial of one epoch
    result = workspace.launch("--space", "segmentation", *args, "--data", str(synth_dir))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    parents, children = runs_of(client, "segmentation")
    # Runs, metrics, the model artifact and the registry all went through the HTTP server.
    assert len(parents) == 1 and len(children) == 1 and "test/iou" in parents[0].data.metrics
    assert client.get_registered_model(parents[0].data.tags["registered_model"].split("/")[0]).aliases


class Evil:
    def __reduce__(self):
        return (print, ("this code ran while loading a checkpoint",))


def test_tampered_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint"
    torch.save({"state_dict": {}, "payload": Evil()}, path)
    config = {"model.name": "unet", "model.width": 4, "model.depth": 2, "loss.name": "bce", "data.image_size": 32}
    # weights_only loading refuses arbitrary objects: one clear error naming the file.
    with pytest.raises(RuntimeError, match="refused to load checkpoint"):
        load_system("segmentation", config, path, num_classes=1, epochs=1)


def test_no_environment_secret_reaches_the_tracking_store(tmp_path: Path, synth_dir: Path) -> None:
    workspace = Workspace(tmp_path)
    secret = "medtune-test-secret-7f3a9c"
    env = {"AWS_SECRET_ACCESS_KEY": secret, "MLFLOW_TRACKING_PASSWORD": secret, "HF_TOKEN": secret}
    result = workspace.launch(
        "--space", "whole_cls", "--smoke", "--data", str(synth_dir), "--num-samples", "1", "--max-epochs", "1", env=env
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(workspace.tracking_uri)
    parents, children = runs_of(client, "whole_cls")
    texts = []
    for run in parents + children:
        texts += [*run.data.params.values(), *run.data.tags.values(), *run.data.params, *run.data.tags]
    for name in ("search_space.yaml", "resolved_space.json", "versions.json"):
        texts.append(Path(client.download_artifacts(parents[0].info.run_id, name, str(tmp_path))).read_text())
    # Parameters, tags and the provenance artifacts come from the space and the code, never the environment.
    assert len(parents) == 1 and len(children) == 1
    assert not [t for t in texts if secret in t]
