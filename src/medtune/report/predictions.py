"""Plots of the best trial on the test split, drawn from the launch's ``test_predictions.npz``.

The arrays are what the task answered (``BaseTask.predictions``, one ``predict_batch`` per task);
``report_kind`` says which layout the file has (``medtune.report.write`` picks the plot by it):

* ``classification``: ``labels`` int [N], ``probs`` float [N,K] (softmax), optional ``class_names``
  str [K]; with a CAM layer also ``images``, ``masks``, ``cams`` [M,S,S] and ``saliency_iou`` [M] of
  the first M test images, as the network saw them;
* ``multilabel``: ``labels`` uint8 [N,K] (multi-hot), ``probs`` float [N,K] (sigmoid);
* ``segmentation``: ``images`` uint8 [M,3,S,S], ``masks`` uint8 [M,1,S,S], ``probs`` float [M,1,S,S]
  for the first M test images, and ``iou`` float [N] per image (``medtune.metrics.per_image_iou``:
  1.0 where mask and prediction are both empty, as in ``test/image_iou``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

from medtune.overlays import cam_overlay, overlay_side
from medtune.report.plots import save

MAX_PANELS = 8  # overlays shown: enough to judge, small enough to embed


def class_names(preds: dict[str, np.ndarray], fallback: list[str] | None = None) -> list[str]:
    """Class names from the arrays, else ``fallback`` (e.g. the dataset's categories), else indices."""
    k = preds["probs"].shape[1]
    if "class_names" in preds and len(preds["class_names"]) == k:
        return [str(n) for n in preds["class_names"]]
    if fallback and len(fallback) == k:
        return list(fallback)
    return [f"class {i}" for i in range(k)]


def confusion_and_roc(preds: dict[str, np.ndarray], names: list[str], path: Path, *, title: str) -> Path:
    """The confusion matrix (counts) and one-vs-rest ROC curves of a classifier on the test split."""
    labels, probs = preds["labels"].astype(int), preds["probs"].astype(float)
    k = probs.shape[1]
    matrix = confusion_matrix(labels, probs.argmax(1), labels=list(range(k)))
    fig = Figure(figsize=(11, 4.6))
    left, right = fig.subplots(1, 2)
    left.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        left.text(j, i, str(count), ha="center", va="center", color="white" if count > matrix.max() / 2 else "black")
    left.set_xticks(range(k), names, rotation=30, fontsize=8)
    left.set_yticks(range(k), names, fontsize=8)
    left.set(xlabel="predicted", ylabel="true", title=f"confusion matrix ({len(labels)} test images)")
    for c in range(k):
        positive = labels == c
        if positive.any() and (~positive).any():  # ROC needs both kinds of image
            fpr, tpr, _ = roc_curve(positive, probs[:, c])
            right.plot(fpr, tpr, label=f"{names[c]} (AUC {roc_auc_score(positive, probs[:, c]):.2f})")
    right.plot([0, 1], [0, 1], linestyle=":", color="0.5")
    right.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, one class vs rest", aspect="equal")
    right.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    return save(fig, path)


def _panels(count: int) -> tuple[Figure, list]:
    n = min(count, MAX_PANELS)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(2.6 * cols, 2.8 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel().tolist()
    for ax in axes:
        ax.axis("off")
    return fig, axes[:n]


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.transpose(image, (1, 2, 0)) if image.shape[0] in (1, 3) else image


def segmentation_overlays(preds: dict[str, np.ndarray], path: Path, *, title: str) -> Path:
    """Test images with the ground-truth outline (green) and the predicted one (red, p >= 0.5)."""
    images, masks, probs = preds["images"], preds["masks"], preds["probs"]
    iou = preds.get("iou")
    fig, axes = _panels(len(images))
    for i, ax in enumerate(axes):
        ax.imshow(_rgb(images[i]))
        if masks[i].any():
            ax.contour(masks[i].squeeze(0), levels=[0.5], colors="lime", linewidths=1.2)
        if (probs[i] >= 0.5).any():
            ax.contour(probs[i].squeeze(0).astype(float), levels=[0.5], colors="red", linewidths=1.2)
        if iou is not None and i < len(iou):
            ax.set_title(
                f"IoU {iou[i]:.2f}" + (" (both empty)" if not masks[i].any() and iou[i] == 1 else ""), fontsize=9
            )
    fig.suptitle(f"{title}\ngreen: ground truth, red: prediction (p >= 0.5)", fontsize=10)
    return save(fig, path)


def saliency_overlays(preds: dict[str, np.ndarray], path: Path, *, title: str) -> Path:
    """Test images with the classifier's CAM and the lesion outline (``medtune.overlays.cam_overlay``).

    The same renderer and images as the run's ``cam_overlays/`` PNGs.
    """
    images, cams = preds["images"], preds["cams"]
    masks = preds.get("masks")
    fig, axes = _panels(len(cams))
    for i, ax in enumerate(axes):
        side = overlay_side(images[i].shape[-1])
        ax.imshow(cam_overlay(images[i], cams[i], None if masks is None else masks[i], side=side))
        if "labels" in preds and i < len(preds["labels"]):
            ax.set_title(f"label {int(preds['labels'][i])}", fontsize=9)
    fig.suptitle(f"{title}\nsaliency (CAM) over the image the classifier saw; white: lesion outline", fontsize=10)
    return save(fig, path)
