"""The one Trainer factory: trials, test evaluation and benchmarks build their Trainer here."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from medtune.quiet import quiet_lightning


def make_trainer(*, max_epochs: int = 1, precision: str = "32-true", callbacks: list | None = None) -> pl.Trainer:
    """A quiet Trainer on the GPU this process was given, if any, else the CPU.

    Args:
        max_epochs: epochs to train (ignored by ``Trainer.test``).
        precision: Lightning precision on a GPU, e.g. ``16-mixed``; the CPU always runs ``32-true``.
        callbacks: Lightning callbacks (e.g. the trial's per-epoch report).
    """
    quiet_lightning()
    gpu = torch.cuda.is_available()
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator="gpu" if gpu else "cpu",
        devices=1,
        precision=precision if gpu else "32-true",
        callbacks=callbacks or [],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
