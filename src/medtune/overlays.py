"""HiResCAM overlays of test images, for the best trial's report: where does the classifier look?

Each PNG shows the image the network saw (de-normalised), its HiResCAM for the *true* class at the
backbone's CAM layer (the map behind ``test/saliency_iou``) as a jet heat map, and the ground-truth
lesion outline in white. File names carry the true and predicted class and the thresholded IoU
(``na`` for an image without a lesion), e.g. ``cam_03_img12_true2_pred1_iou0.41.png``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from medtune.data.datasets import IMAGENET_MEAN, IMAGENET_STD
from medtune.saliency import hard_iou
from medtune.tasks.classification import ClassificationTask

CONTOUR_RGB = (255, 255, 255)  # white stays visible on every jet colour


def sample_indices(length: int, n: int) -> list[int]:
    """``n`` indices spread evenly over ``range(length)`` (all of them when ``n >= length``)."""
    return sorted({int(i) for i in np.linspace(0, length - 1, min(n, length)).round()}) if length else []


def _to_rgb(image: Tensor) -> np.ndarray:
    """ImageNet-normalised [3, H, W] -> float32 [H, W, 3] in [0, 1], as show_cam_on_image wants."""
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return (image.cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy().astype(np.float32)


def _draw(image: Tensor, cam: Tensor, mask: Tensor, *, side: int) -> np.ndarray:
    """One overlay, uint8 RGB [side, side, 3]: heat map blended on the image, lesion outline on top."""
    import cv2
    from pytorch_grad_cam.utils.image import show_cam_on_image  # about 6 s to import: only here

    size = (side, side)
    rgb = cv2.resize(_to_rgb(image), size, interpolation=cv2.INTER_LINEAR)
    heat = cv2.resize(cam.detach().cpu().numpy().astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    overlay = show_cam_on_image(rgb, np.clip(heat, 0, 1), use_rgb=True)
    outline = cv2.resize((mask.cpu().numpy()[0] > 0.5).astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(outline, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(overlay, contours, -1, CONTOUR_RGB, thickness=max(1, side // 128))
    return overlay


def save_cam_overlays(
    system: ClassificationTask, dataset: Dataset, out_dir: Path, *, n: int = 8, min_side: int = 224
) -> list[Path]:
    """Write HiResCAM overlay PNGs for ``n`` test images spread evenly over ``dataset``.

    Args:
        system: a trained classification system (any task built on ``ClassificationTask``).
        dataset: the test split as the network sees it, e.g. ``build_datamodule(config,
            caches=..., pred_masks=...).dataset("test")``: items with ``image``, ``mask``, ``label``.
        out_dir: folder for the PNGs (created).
        n: images to draw.
        min_side: small inputs are upscaled by an integer factor to at least this side (px).

    Returns:
        The written files, in dataset order.
    """
    import cv2

    indices = sample_indices(len(dataset), n)
    if not indices:
        return []
    batch = default_collate([dataset[i] for i in indices])
    was_training = system.training
    system.eval()
    try:
        logits, cams = system.cam(batch["image"].to(system.device), batch["label"].to(system.device))
    finally:
        system.train(was_training)
    iou, valid = hard_iou(cams, batch["mask"].to(cams.device))
    side = batch["image"].shape[-1] * math.ceil(min_side / batch["image"].shape[-1])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, index in enumerate(indices):
        overlay = _draw(batch["image"][k], cams[k], batch["mask"][k], side=side)
        score = f"{iou[k].item():.2f}" if valid[k] else "na"
        name = f"cam_{k:02d}_img{index}_true{int(batch['label'][k])}_pred{int(logits[k].argmax())}_iou{score}.png"
        paths.append(out_dir / name)
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    return paths
