"""Evaluate a trained trial on the held-out test split, in the driver, after the search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from medtune.build import build_datamodule, build_system
from medtune.data.cache import load_cache
from medtune.tasks.base import BaseTask
from medtune.tasks.multilabel import MultiLabelTask
from medtune.trainer import make_trainer


def load_system(
    task: str, config: dict, checkpoint_file: Path, *, num_classes: int, epochs: int, train_cache: str | None = None
) -> BaseTask:
    """Rebuild the system from its config and load weights, refusing arbitrary pickles.

    ``train_cache`` (the training split's cache) is needed when a loss weight is ``balanced``.
    """
    system = build_system(task, config, num_classes=num_classes, epochs=epochs, train_cache=train_cache)
    try:
        state = torch.load(checkpoint_file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means: do not trust this file
        raise RuntimeError(
            f"{checkpoint_file}: refused to load checkpoint ({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from None
    system.load_state_dict(state["state_dict"])
    return system.eval()


def test_metrics(
    system: BaseTask, config: dict, *, caches: dict[str, str], pred_masks: dict[str, str] | None = None
) -> dict[str, float]:
    """Run the test split once and return its ``test/*`` metrics."""
    data = build_datamodule(
        config, caches=caches, pred_masks=pred_masks, num_classes=getattr(system, "num_classes", None)
    )
    trainer = make_trainer()
    results = trainer.test(system, datamodule=data, verbose=False)
    return {k: float(v) for k, v in results[0].items()}


@torch.no_grad()
def test_predictions(
    system: BaseTask,
    config: dict,
    *,
    caches: dict[str, str],
    pred_masks: dict[str, str] | None = None,
    max_overlays: int = 16,
) -> dict[str, np.ndarray]:
    """Per-image test predictions, saved as ``test_predictions.npz`` for reports and comparisons.

    Classification: ``image_ids``, ``labels`` [N], ``probs`` [N,K] (softmax) and, for a backbone with
    a CAM layer, ``images`` uint8 [M,3,S,S], ``masks`` uint8 [M,1,S,S] and ``cams`` [M,S,S] (HiResCAM
    of the true class) of the first ``max_overlays`` images. Multi-label:
    ``image_ids``, ``labels`` uint8 [N,K] (multi-hot, 1 = label present), ``probs`` [N,K] (sigmoid, one
    per label). Segmentation: ``image_ids``,
    ``iou`` [N] (per image; NaN when both mask and prediction are empty) and, for the first
    ``max_overlays`` images, ``images`` uint8 [M,3,S,S], ``masks`` uint8 [M,1,S,S], ``probs`` [M,1,S,S].
    """
    multilabel = isinstance(system, MultiLabelTask)
    data = build_datamodule(
        config, caches=caches, pred_masks=pred_masks, num_classes=getattr(system, "num_classes", None)
    )
    dataset = data.dataset("test")
    loader = torch.utils.data.DataLoader(dataset, batch_size=data.batch_size)
    model = system.model.eval()
    outputs, labels, masks = [], [], []
    for batch in loader:
        outputs.append(model(batch["image"]))
        labels.append(batch["targets"] if multilabel else batch["label"])
        masks.append(batch["mask"])
    logits, mask = torch.cat(outputs), torch.cat(masks)
    out = {"image_ids": load_cache(caches["test"])["image_ids"].numpy()}
    if multilabel:
        return {**out, "labels": torch.cat(labels).to(torch.uint8).numpy(), "probs": torch.sigmoid(logits).numpy()}
    if logits.ndim == 2:  # classification
        out = {**out, "labels": torch.cat(labels).numpy(), "probs": torch.softmax(logits, 1).numpy()}
        if getattr(system, "cam_layer", None):
            out.update(_saliency(system, dataset, mask, min(max_overlays, len(dataset))))
        return out
    probs = torch.sigmoid(logits)
    pred = probs >= 0.5
    inter = (pred & (mask > 0)).flatten(1).sum(1).float()
    union = (pred | (mask > 0)).flatten(1).sum(1).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(union, float("nan")))
    m = min(max_overlays, len(dataset))
    return {
        **out,
        "iou": iou.numpy(),
        "images": dataset.images[:m].numpy(),
        "masks": mask[:m].to(torch.uint8).numpy(),
        "probs": probs[:m].numpy().astype(np.float16),
    }


def _saliency(system: BaseTask, dataset: Dataset, masks: torch.Tensor, m: int) -> dict[str, np.ndarray]:
    """The first ``m`` test images, lesion masks and HiResCAMs of the true class (behind ``saliency_iou``)."""
    batch = default_collate([dataset[i] for i in range(m)])
    _, cams = system.cam(batch["image"], batch["label"])
    return {
        "images": dataset.images[:m].numpy(),
        "masks": masks[:m].to(torch.uint8).numpy(),
        "cams": cams.detach().numpy().astype(np.float16),
    }
