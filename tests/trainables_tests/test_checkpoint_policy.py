"""The checkpoint policy: which epochs are written, exact resume from any of them, no epoch logged twice.

The launch-level kill/resume test is tests/trainables_tests/test_resume.py; these are its parts, without Ray.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from medtune.engine.trainer import make_trainer
from medtune.tracking.store import PARENT_TAG, TRIAL_TAG
from tests.helpers import build_one
from trainables.checkpoint_policy import CheckpointPolicy
from trainables.spool import PendingWrites

CONFIG = {  # a shuffled loader and augmentation: random draws in every epoch
    "model.name": "resnet18",
    "model.weights": "none",
    "loss.name": "ce",
    "data.image_size": 32,
    "data.batch_size": 8,
    "data.augment": 0.5,
    "data.num_workers": 0,
    "train.optimizer": "adamw",
    "train.scheduler": "cosine",
    "train.lr": 1e-3,
}


def test_policy_writes_new_bests_the_last_epoch_and_when_due() -> None:
    policy = CheckpointPolicy(metric="val/acc", mode="max", every_s=60.0, saved_at=0.0)
    decisions = [
        policy.reason({"val/acc": value}, last=last, now=now)
        for value, last, now in [
            (0.5, False, 1),  # the first value is a best
            (0.4, False, 2),
            (float("nan"), False, 3),  # never a best
            (0.6, False, 4),
            (0.6, False, 5),  # a tie is not a best
            (0.55, False, 70),  # 66 s since the last checkpoint: due
            (0.5, False, 80),
            (0.5, True, 90),  # the trial's last epoch
        ]
    ]
    assert decisions == ["best", None, None, "best", None, "due", None, "last"]
    assert policy.best == 0.6
    lower = CheckpointPolicy(metric="val/loss", mode="min", every_s=60.0, saved_at=0.0)
    assert [lower.reason({"val/loss": v}, last=False, now=1) for v in (1.0, 2.0, 0.5)] == ["best", None, "best"]
    # No objective known, or every_s=0: every epoch, as before the policy.
    assert CheckpointPolicy(metric="", every_s=60.0).reason({}, last=False) == "due"
    every = CheckpointPolicy(metric="val/acc", every_s=0)
    assert [every.reason({"val/acc": 0.1}, last=False) for _ in range(3)] == ["best", "due", "due"]
    # A resumed trial goes on from the best its checkpoint holds.
    resumed = CheckpointPolicy(metric="val/acc", mode="max", every_s=60.0)
    resumed.load_state_dict(policy.state_dict())
    assert resumed.reason({"val/acc": 0.59}, last=False) is None


class Record(__import__("pytorch_lightning").Callback):
    """Each epoch's validation metrics, as the trial's report reads them."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def _fit(caches: dict, epochs: int, *, seed: int, ckpt: Path | None = None, save: Path | None = None):
    torch.manual_seed(seed)
    system, data = build_one("classification", CONFIG, caches, epochs=4)
    record = Record()
    trainer = make_trainer(max_epochs=epochs, callbacks=[record], seed=seed)
    trainer.fit(system, datamodule=data, ckpt_path=str(ckpt) if ckpt else None)
    if save is not None:
        trainer.save_checkpoint(save)
    return record.epochs, system


@pytest.mark.e2e
def test_a_fit_resumed_from_an_older_checkpoint_retrains_its_epochs_exactly(task_caches: dict, tmp_path: Path) -> None:
    """Epochs re-trained after a resume give the values the interrupted run logged (EpochSeed)."""
    torch.set_num_threads(1)
    straight, model = _fit(task_caches, 4, seed=3)
    first, _ = _fit(task_caches, 2, seed=3, save=tmp_path / "epoch2.ckpt")
    resumed, again = _fit(task_caches, 4, seed=3, ckpt=tmp_path / "epoch2.ckpt")
    assert first == straight[:2]
    assert resumed == straight[2:]  # every metric of epochs 3 and 4, bit for bit
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    # The per-epoch seed matters: another seed trains another way.
    other, _ = _fit(task_caches, 2, seed=4)
    assert other != straight[:2]


@pytest.mark.e2e
def test_epochs_retrained_after_a_resume_are_not_logged_twice(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = MlflowClient(uri)
    exp = store.create_experiment("resumed")
    ids = {"experiment_id": exp, "parent_run_id": store.create_run(exp).info.run_id}
    tags = {PARENT_TAG: ids["parent_run_id"], TRIAL_TAG: "t1"}

    def epoch(writes: PendingWrites, n: int, acc: float, ts: int, tags: dict | None = None) -> None:
        writes.log("t1", step=n, metrics=[["val/acc", acc, ts, n], ["epoch", n, ts, n]], tags=tags or {})

    before = PendingWrites(tracking_uri=uri, **ids, metric="val/acc", mode="max", spool=None)
    before.start("t1", name="t1", tags=tags, params={"train.lr": "0.01"})
    for n, acc in [(1, 0.5), (2, 0.7), (3, 0.6)]:
        epoch(before, n, acc, ts=1000 * n)
    assert before.drain(time.monotonic() + 30)
    # The driver was killed after epoch 3; the trial's latest checkpoint was epoch 1 (its best was 2's,
    # kept as well): the next process re-trains 2 and 3 (other timestamps), then goes on.
    after = PendingWrites(tracking_uri=uri, **ids, metric="val/acc", mode="max", spool=None)
    after.start("t1", name="t1", tags=tags, params={"train.lr": "0.01"})
    for n, acc in [(2, 0.7), (3, 0.6), (4, 0.8)]:
        epoch(after, n, acc, ts=9000 + n, tags={"resumed_from_epoch": "1"})
    assert after.drain(time.monotonic() + 30)
    (run,) = store.search_runs([exp], f"tags.{TRIAL_TAG} = 't1'")
    for key in ("val/acc", "epoch"):
        assert [m.step for m in store.get_metric_history(run.info.run_id, key)] == [1, 2, 3, 4], key
    assert run.data.metrics["best/val/acc"] == 0.8 and run.data.metrics["best/epoch"] == 4
    assert run.data.tags["resumed_from_epoch"] == "1"


@pytest.mark.parametrize("text", ["-1", "nan", "inf", "soon"])
def test_checkpoint_minutes_must_be_a_number_of_minutes(text: str, capsys: pytest.CaptureFixture) -> None:
    from trainables import launch

    with pytest.raises(SystemExit) as exit_:
        launch.parse_args(["--space", "whole_cls", "--checkpoint-minutes", text])
    assert exit_.value.code == 2
    assert f"--checkpoint-minutes: expected a number of minutes >= 0, got '{text}'" in capsys.readouterr().err


def test_pruner_keeps_best_and_latest_and_deletes_the_rest_two_snapshots_and_a_grace_late(tmp_path: Path) -> None:
    from types import SimpleNamespace

    import pyarrow.fs

    from trainables.cleanup import CheckpointPruner

    def checkpoints(pruner: CheckpointPruner, folder: Path) -> list[Path]:
        trial = SimpleNamespace(trial_id="t1", last_result={})
        folders = []
        for i, acc in enumerate([0.5, 0.7, 0.6, 0.7, float("nan")]):  # 1: the best (first of a tie); 4: the latest
            folders.append(folder / f"checkpoint_{i:06d}")
            folders[-1].mkdir(parents=True)
            trial.last_result = {"val/acc": acc}
            checkpoint = SimpleNamespace(path=str(folders[-1]), filesystem=pyarrow.fs.LocalFileSystem())  # as Ray's
            pruner.on_checkpoint(0, [trial], trial, checkpoint)
        return folders

    pruner = CheckpointPruner(metric="val/acc", mode="max", grace_s=0.0)
    folders = checkpoints(pruner, tmp_path / "a")
    exists = lambda: [f.name[-1] for f in folders if f.exists()]  # noqa: E731
    pruner.get_state()  # snapshot 1 no longer names 0, 2, 3: marked, not deleted
    pruner.get_state()  # snapshot 2
    assert exists() == ["0", "1", "2", "3", "4"]
    pruner.get_state()  # two snapshots later: deleted
    assert exists() == ["1", "4"]
    # Snapshots milliseconds apart (TUNE_GLOBAL_CHECKPOINT_S=0): nothing deleted before grace_s has passed.
    patient = CheckpointPruner(metric="val/acc", mode="max", grace_s=3600.0)
    folders = checkpoints(patient, tmp_path / "b")
    for _ in range(5):
        patient.get_state()
    assert exists() == ["0", "1", "2", "3", "4"]
    # Pickled with the Tuner: its arguments only.
    import pickle

    again = pickle.loads(pickle.dumps(patient))
    assert (again.metric, again.mode, again.grace_s, again._kept) == ("val/acc", "max", 3600.0, {})
