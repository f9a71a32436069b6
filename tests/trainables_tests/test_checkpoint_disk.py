"""Disk per search: a trial keeps its latest checkpoint in full (for ``--resume``) and its best one as
weights only (for publishing); an ended trial keeps its best weights only (issue 26, item 7)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs
import pytest
import torch

from medtune.engine.evaluate import load_system
from medtune.engine.trainer import make_trainer
from tests.helpers import build_one
from trainables.checkpoint_policy import WEIGHTS_KEYS, resumable
from trainables.cleanup import CheckpointPruner, weights_only

CONFIG = {
    "model.name": "resnet18",
    "model.weights": "none",
    "loss.name": "ce",
    "data.image_size": 32,
    "data.batch_size": 8,
    "data.augment": 0.0,
    "data.num_workers": 0,
    "train.optimizer": "adamw",
    "train.scheduler": "cosine",
    "train.lr": 1e-3,
    "train.saliency_metric": False,
}
EPOCHS = 3


def _fit(caches: dict, epochs: int, *, ckpt: Path | None = None, save: Path | None = None):
    torch.manual_seed(0)
    system, data = build_one("classification", CONFIG, caches, epochs=EPOCHS)
    trainer = make_trainer(max_epochs=epochs, seed=0)
    trainer.fit(system, datamodule=data, ckpt_path=str(ckpt) if ckpt else None)
    if save is not None:
        save.parent.mkdir(parents=True)
        trainer.save_checkpoint(save)
    return trainer, system


def _register(pruner: CheckpointPruner, trial: SimpleNamespace, folder: Path, score: float) -> None:
    trial.last_result = {"val/acc": score}
    pruner.on_checkpoint(0, [trial], trial, SimpleNamespace(path=str(folder), filesystem=pyarrow.fs.LocalFileSystem()))


@pytest.mark.e2e
def test_best_keeps_weights_only_latest_keeps_the_state_and_resume_restores(task_caches: dict, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    best, latest = tmp_path / "trial" / "checkpoint_000000", tmp_path / "trial" / "checkpoint_000001"
    _, trained = _fit(task_caches, 1, save=best / "checkpoint")
    _fit(task_caches, 2, ckpt=best / "checkpoint", save=latest / "checkpoint")
    full = (best / "checkpoint").stat().st_size
    pruner, trial = CheckpointPruner(metric="val/acc", mode="max", grace_s=0.0), SimpleNamespace(trial_id="t1")
    _register(pruner, trial, best, 0.7)
    _register(pruner, trial, latest, 0.6)  # the latest, worse than the best
    pruner.get_state()  # marks the best (no longer the latest) to be stripped
    pruner.get_state()
    # Two snapshots have not passed since it was marked: a kill now resumes from a snapshot that may
    # still name it as the latest, so it is still whole.
    assert resumable([best / "checkpoint"])
    pruner.get_state()
    stripped = torch.load(best / "checkpoint", weights_only=True)
    # The best now holds the weights and their epoch, no optimizer state; the latest holds everything.
    assert set(stripped) <= set(WEIGHTS_KEYS) and "optimizer_states" not in stripped
    assert "optimizer_states" in torch.load(latest / "checkpoint", weights_only=True)
    assert not resumable([best / "checkpoint"]) and resumable([latest / "checkpoint"])
    # AdamW keeps two tensors per weight: the weights are a third of the full checkpoint.
    assert (best / "checkpoint").stat().st_size < 0.4 * full
    # Publishing reads the stripped best: the same weights as trained.
    system = load_system(
        "classification", CONFIG, best / "checkpoint", num_classes=task_caches["num_classes"], max_epochs=EPOCHS
    )
    for (name, a), (_, b) in zip(trained.state_dict().items(), system.state_dict().items()):
        assert torch.equal(a, b), name
    # --resume restores from the latest: epoch 2 onwards, with the optimizer's state (AdamW's step
    # count goes on from the saved one instead of starting at 0).
    saved_step = _adam_step(torch.load(latest / "checkpoint", weights_only=True)["optimizer_states"][0])
    resumed, _ = _fit(task_caches, EPOCHS, ckpt=latest / "checkpoint")
    steps_per_epoch = saved_step / 2
    assert resumed.current_epoch == EPOCHS
    assert _adam_step(resumed.optimizers[0].state_dict()) == pytest.approx(saved_step + steps_per_epoch)


def _adam_step(optimizer_state: dict) -> float:
    return float(next(iter(optimizer_state["state"].values()))["step"])


@pytest.mark.e2e
def test_an_ended_trial_keeps_its_best_weights_only(task_caches: dict, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    folders = [tmp_path / "trial" / f"checkpoint_00000{i}" for i in range(3)]
    _fit(task_caches, 1, save=folders[0] / "checkpoint")
    for folder in folders[1:]:
        shutil.copytree(folders[0], folder)
    pruner, trial = CheckpointPruner(metric="val/acc", mode="max", grace_s=0.0), SimpleNamespace(trial_id="t1")
    for folder, score in zip(folders, [0.5, 0.8, 0.6]):  # 1: the best, 2: the latest
        _register(pruner, trial, folder, score)
    pruner.on_trial_complete(0, [trial], trial)
    # Ended: no checkpoint of it is resumed any more, so best and latest hold weights only at once.
    assert not resumable([folders[1] / "checkpoint", folders[2] / "checkpoint"])
    for _ in range(3):
        pruner.get_state()
    # Two snapshots later the latest and the older one are gone; the best stays, as weights.
    assert [f.exists() for f in folders] == [False, True, False]


def test_weights_only_rewrites_fold_files_and_leaves_the_rest(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "checkpoint_000000"
    folder.mkdir()
    weights = {"layer.weight": torch.ones(4, 4)}
    for k in range(2):  # a cross-validated trial's checkpoint: fold files and its state
        full = {"state_dict": weights, "epoch": 3, "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(4, 4)}}}]}
        torch.save({**full, "lr_schedulers": [], "loops": {}, "callbacks": {}}, folder / f"fold{k}.ckpt")
    (folder / "cv_state.json").write_text(json.dumps({"epoch": 3}))
    (folder / "notes.ckpt.txt").write_text("not a checkpoint")
    fs = pyarrow.fs.LocalFileSystem()
    assert weights_only(fs, str(folder)) > 0
    for k in range(2):
        kept = torch.load(folder / f"fold{k}.ckpt", weights_only=True)
        assert set(kept) == {"state_dict", "epoch"} and torch.equal(
            kept["state_dict"]["layer.weight"], torch.ones(4, 4)
        )
    assert json.loads((folder / "cv_state.json").read_text()) == {"epoch": 3}
    assert sorted(p.name for p in folder.iterdir()) == ["cv_state.json", "fold0.ckpt", "fold1.ckpt", "notes.ckpt.txt"]
    # Again: already weights only, nothing to free.
    assert weights_only(fs, str(folder)) == 0
    # A file that is no checkpoint stays as it is, with one line saying so.
    (folder / "fold2.ckpt").write_bytes(b"garbage")
    assert weights_only(fs, str(folder)) == 0
    err = capsys.readouterr().err
    assert (folder / "fold2.ckpt").read_bytes() == b"garbage"
    assert err.count("\n") == 1 and "could not keep only the weights of" in err and "fold2.ckpt" in err
    # A folder that is gone (deleted meanwhile) is no error.
    assert weights_only(fs, str(tmp_path / "missing")) == 0
