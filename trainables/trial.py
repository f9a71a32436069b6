"""The Ray Tune function trainable: build the task from the sampled config and train it.

Each epoch ends with one ``tune.report`` of every logged metric plus a Lightning checkpoint, so ASHA
can stop the trial after any epoch and ``--resume`` continues from the last checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytorch_lightning as pl
import ray
import torch
from ray import tune
from ray.tune.integration.pytorch_lightning import TuneReportCheckpointCallback

from medtune.build import build_datamodule, build_system
from medtune.trainer import make_trainer
from trainables.sampling import flat_config

CHECKPOINT_FILE = "checkpoint"


class EpochReport(TuneReportCheckpointCallback):
    """Tune's Lightning callback plus two facts the driver records on the trial's MLflow run.

    ``early_stopped`` (1.0 when the task's own patience ended training, so the driver can tell it
    from an ASHA stop) and ``node_id`` (the Ray node the trial ran on, for multi-node clusters).
    """

    def _get_report_dict(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict | None:
        report = super()._get_report_dict(trainer, pl_module)
        if report is not None:
            report["early_stopped"] = float(trainer.should_stop)
            report["node_id"] = ray.get_runtime_context().get_node_id()
        return report


@dataclass(frozen=True)
class TrialContext:
    """Constants every trial receives from the driver (absolute paths, prepared once)."""

    task: str
    caches: dict[int, dict[str, str]]  # image size -> split -> cache file
    pred_masks: dict[int, dict[str, str]] | None  # image size -> split -> segmenter probabilities
    num_classes: int
    max_epochs: int
    seed: int
    threads: int
    precision: str  # Lightning precision, e.g. "32-true" or "16-mixed"


def run_trial(config: dict, context: TrialContext) -> None:
    """Train one configuration, reporting validation metrics and a checkpoint every epoch."""
    config = flat_config(config)
    torch.set_num_threads(context.threads)
    pl.seed_everything(context.seed, workers=True, verbose=False)
    size = int(config["data.image_size"])
    caches = context.caches[size]
    system = build_system(
        context.task, config, num_classes=context.num_classes, epochs=context.max_epochs, train_cache=caches["train"]
    )
    data = build_datamodule(
        config, caches=caches, pred_masks=(context.pred_masks or {}).get(size), num_classes=context.num_classes
    )
    # "train_epoch_end" runs after the epoch's validation, so both train and val metrics are in.
    report = EpochReport(filename=CHECKPOINT_FILE, on="train_epoch_end")
    trainer = make_trainer(max_epochs=context.max_epochs, precision=context.precision, callbacks=[report])
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        trainer.fit(system, datamodule=data)
        return
    with checkpoint.as_directory() as folder:
        trainer.fit(system, datamodule=data, ckpt_path=os.path.join(folder, CHECKPOINT_FILE))
