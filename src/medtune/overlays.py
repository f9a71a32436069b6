"""CAM overlays, drawn by one renderer for the published PNGs and the report's saliency figure.

Both draw from the arrays of ``test_predictions.npz`` (``ClassificationTask.predict_batch``), so they
show the same images: the image the network saw (masked or cropped in masked classification), its
HiResCAM for the *true* class (the map behind ``test/saliency_iou``) as a jet heat map blended on it,
and the lesion outline in that view in white. PNG names carry the position, image id, true and
predicted class and the thresholded IoU (``na`` for an image without a lesion), e.g.
``cam_03_img12_true2_pred1_iou0.41.png``. numpy and OpenCV only: the report need not import torch.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

CONTOUR_RGB = (255, 255, 255)  # white stays visible on every jet colour
IMAGE_WEIGHT = 0.5  # share of the image in the blend, as in pytorch_grad_cam's show_cam_on_image
MIN_SIDE = 224  # small inputs are upscaled by a whole factor to at least this side (px)


def overlay_side(size: int, min_side: int = MIN_SIDE) -> int:
    """``size`` times the smallest whole factor that reaches ``min_side`` (pixels stay square blocks)."""
    return size * math.ceil(min_side / size)


def cam_overlay(image: np.ndarray, cam: np.ndarray, mask: np.ndarray | None, *, side: int) -> np.ndarray:
    """One overlay, uint8 RGB ``[side, side, 3]``: jet heat map blended on the image, lesion outline on top.

    Args:
        image: uint8 ``[3, S, S]``, the image the network saw.
        cam: ``[S, S]`` (or ``[1, S, S]``) in ``[0, 1]``.
        mask: the lesion ``[1, S, S]`` (> 0 is lesion), or None for no outline.
        side: output side in pixels.
    """
    import cv2

    size = (side, side)
    rgb = cv2.resize(np.ascontiguousarray(np.transpose(image, (1, 2, 0))), size, interpolation=cv2.INTER_LINEAR)
    heat = cv2.resize(np.squeeze(cam).astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    jet = cv2.applyColorMap(np.uint8(255 * np.clip(heat, 0, 1)), cv2.COLORMAP_JET)
    jet = cv2.cvtColor(jet, cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    blend = (1 - IMAGE_WEIGHT) * jet + IMAGE_WEIGHT * rgb.astype(np.float32) / 255
    overlay = np.uint8(255 * blend / blend.max())
    if mask is not None:
        outline = cv2.resize((np.squeeze(mask) > 0).astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(outline, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(overlay, contours, -1, CONTOUR_RGB, thickness=max(1, side // 128))
    return overlay


def _name(preds: dict[str, np.ndarray], k: int) -> str:
    """``cam_<k>_img<id>_true<c>_pred<c>_iou<x>.png`` from the arrays of image ``k``."""
    image_id = int(preds["image_ids"][k]) if "image_ids" in preds else k
    iou = float(preds["saliency_iou"][k]) if "saliency_iou" in preds else math.nan
    score = "na" if math.isnan(iou) else f"{iou:.2f}"
    true, pred = int(preds["labels"][k]), int(preds["probs"][k].argmax())
    return f"cam_{k:02d}_img{image_id}_true{true}_pred{pred}_iou{score}.png"


def save_cam_overlays(preds: dict[str, np.ndarray], out_dir: Path, *, n: int = 8) -> list[Path]:
    """Write CAM overlay PNGs of the first ``n`` images that carry a CAM in ``preds``.

    Args:
        preds: the ``test_predictions.npz`` arrays of a classifier with a CAM layer (``images``,
            ``cams``, ``masks``, ``labels``, ``probs``; ``image_ids`` and ``saliency_iou`` name the files).
        out_dir: folder for the PNGs (created).
        n: images to draw.

    Returns:
        The written files, in test-split order.
    """
    import cv2

    count = min(n, len(preds["cams"]))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        image = preds["images"][k]
        overlay = cam_overlay(image, preds["cams"][k], preds["masks"][k], side=overlay_side(image.shape[-1]))
        paths.append(out_dir / _name(preds, k))
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    return paths
