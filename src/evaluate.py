"""Evaluate a trained trial on the held-out test split, in the driver, after the search."""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from src.build import build_datamodule, build_system
from src.tasks.base import BaseTask


def load_system(task: str, config: dict, checkpoint_file: Path, *, num_classes: int, epochs: int) -> BaseTask:
    """Rebuild the system from its config and load weights, refusing arbitrary pickles."""
    system = build_system(task, config, num_classes=num_classes, epochs=epochs)
    try:
        state = torch.load(checkpoint_file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means: do not trust this file
        raise RuntimeError(f"{checkpoint_file}: refused to load checkpoint ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    system.load_state_dict(state["state_dict"])
    return system.eval()


def test_metrics(
    system: BaseTask, config: dict, *, caches: dict[str, str], pred_masks: dict[str, str] | None = None
) -> dict[str, float]:
    """Run the test split once and return its ``test/*`` metrics."""
    data = build_datamodule(config, caches=caches, pred_masks=pred_masks)
    trainer = pl.Trainer(
        accelerator="gpu" if torch.cuda.is_available() else "cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    results = trainer.test(system, datamodule=data, verbose=False)
    return {k: float(v) for k, v in results[0].items()}
