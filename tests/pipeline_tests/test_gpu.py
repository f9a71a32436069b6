"""On a CUDA GPU: the one Trainer factory trains in mixed precision on the device (skipped without CUDA)."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch

from medtune.engine.trainer import make_trainer
from tests.helpers import BASE, TASK_CONFIGS, build_one


class Probe(pl.Callback):
    """Where the parameters are, the network's output dtype, and the loss, at every training step."""

    def __init__(self) -> None:
        self.devices: set[str] = set()
        self.dtypes: set[torch.dtype] = set()
        self.losses: list[float] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.model.register_forward_hook(lambda module, args, out: self.dtypes.add(out.dtype))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
        self.devices |= {p.device.type for p in pl_module.parameters()}

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        self.losses.append(loss.item())


@pytest.mark.gpu
def test_mixed_precision_epoch_trains_on_cuda(task_caches: dict) -> None:
    system, data = build_one("segmentation", {**BASE, **TASK_CONFIGS["segmentation"]}, task_caches, epochs=1)
    probe = Probe()
    trainer = make_trainer(max_epochs=1, precision="16-mixed", callbacks=[probe])
    trainer.fit(system, datamodule=data)
    # Every step ran with the parameters on the GPU, under float16 autocast (the network's logits are
    # float16 while its weights stay float32) with a gradient scaler ...
    assert probe.devices == {"cuda"} and trainer.precision == "16-mixed"
    assert probe.dtypes == {torch.float16} and next(system.parameters()).dtype == torch.float32
    assert trainer.precision_plugin.scaler is not None
    # ... one epoch of the 30 training images in batches of 4, every loss finite.
    assert len(probe.losses) == math.ceil(30 / BASE["data.batch_size"])
    assert all(math.isfinite(v) for v in probe.losses)
