"""Promotion through the real launch.py: a worse segmenter is registered, and the champion is kept."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from medtune.data.coco import resolve_dataset
from medtune.tracking.registry import CHAMPION, champion, segmenter_name
from tests.helpers import Workspace, runs_of, tail

pytestmark = pytest.mark.slow
# One epoch at a learning rate of 1e-6 leaves the U-Net at its initialisation: a segmenter that the
# shared smoke search's champion (two trials of up to 2 epochs at 3e-4..1e-2) beats on val/iou.
UNTRAINED = {
    "space": "segmentation",
    "config": {
        "data.image_size": 32,
        "data.batch_size": 8,
        "data.augment": 0.0,
        "model.name": "unet",
        "model.width": 4,
        "model.depth": 2,
        "loss.name": "bce",
        "train.optimizer": "adamw",
        "train.scheduler": "constant",
        "train.lr": 1.0e-6,
    },
    "budget": {"max_epochs": 1},
}


def test_worse_segmenter_is_registered_but_the_champion_is_kept(
    shared_workspace: Workspace, seg_launch: subprocess.CompletedProcess, synth_dir: Path, tmp_path: Path
) -> None:
    client = MlflowClient(shared_workspace.tracking_uri)
    dataset = resolve_dataset(synth_dir, cache_root=shared_workspace.root / "cache")
    name = segmenter_name(dataset.name, dataset.fingerprint)
    before = champion(client, name)
    config = tmp_path / "untrained.yaml"
    config.write_text(yaml.safe_dump(UNTRAINED))
    # Cross-validated like the champion (--folds 2), so their fold-mean scores are comparable.
    result = shared_workspace.launch(
        "--config", str(config), "--folds", "2", "--data", str(synth_dir), "--experiment", "seg_worse"
    )
    assert result.returncode == 0, tail(result)
    parent = runs_of(client, "seg_worse")[0][0]
    new_name, new_version = parent.data.tags["registered_model"].split("/")
    new = client.get_model_version(new_name, new_version)
    # Precondition: the new segmenter scored below the champion on the same validation split.
    assert float(new.tags["val_score"]) < float(before.tags["val_score"]), (new.tags, before.tags)
    # Registered as a new version of the same model, with the reason it was not promoted ...
    assert new_name == name and int(new_version) == int(before.version) + 1
    assert new.tags["promotion"].endswith("; champion kept") and "not better than" in new.tags["promotion"]
    # ... the alias still on the old version ...
    assert client.get_model_version_by_alias(name, CHAMPION).version == before.version
    # ... and the terminal says so.
    assert "champion kept" in result.stdout
