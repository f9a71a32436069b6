"""The one Trainer factory: trials, test evaluation and benchmarks build their Trainer here."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from medtune.engine.quiet import quiet_lightning


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed every random draw of epoch ``epoch`` (0-based) of a run seeded ``seed`` starts from."""
    return (seed * 1_000_003 + epoch) % 2**32


class EpochSeed(pl.Callback):
    """Seed each epoch from (seed, epoch), so an epoch trains the same whether or not a resume preceded it.

    Without it an epoch's shuffling, augmentation and dropout continue the global generator from
    wherever the previous epochs left it, and a fit resumed from a checkpoint of epoch k (which holds
    weights, optimizer, scheduler and early-stopping state, not the generators) trains epoch k+1
    differently from the uninterrupted run. Here the generators are seeded at the start of each epoch,
    before its first batch is drawn (the training loader draws nothing from them before that:
    ``medtune.data.datasets``), so a resumed epoch retrains bit for bit on the CPU, loading in the
    trial's process (``data.num_workers: 0``, the default with one CPU per trial). Loader workers
    keep their own generators from epoch to epoch, so with them a retrained epoch is an equivalent
    draw, not the same one.

    Args:
        seed: the run's seed (the launch's ``--seed``).
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl.seed_everything(epoch_seed(self.seed, trainer.current_epoch), workers=True, verbose=False)


def make_trainer(
    *, max_epochs: int = 1, precision: str = "32-true", callbacks: list | None = None, seed: int | None = None
) -> pl.Trainer:
    """A quiet Trainer on the GPU this process was given, if any, else the CPU.

    Args:
        max_epochs: epochs to train (ignored by ``Trainer.test``).
        precision: Lightning precision on a GPU, e.g. ``16-mixed``; the CPU always runs ``32-true``.
        callbacks: Lightning callbacks (e.g. the trial's per-epoch report).
        seed: seed every epoch from (seed, epoch) (``EpochSeed``: a resumed fit trains as the
            uninterrupted one would) [None: the generators run on from wherever the caller seeded them].
    """
    quiet_lightning()
    gpu = torch.cuda.is_available()
    callbacks = list(callbacks or []) + ([EpochSeed(seed)] if seed is not None else [])
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator="gpu" if gpu else "cpu",
        devices=1,
        precision=precision if gpu else "32-true",
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
