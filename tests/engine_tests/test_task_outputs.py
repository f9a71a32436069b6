"""Tasks own their outputs: every registered task answers what it saves and how it is drawn.

The contract test runs over ``TASKS``, so a new task is checked the moment its registry line exists.
"""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from medtune.data.cache import load_cache
from medtune.data.datasets import CachedDataModule
from medtune.engine import build, evaluate
from medtune.engine.trainer import make_trainer
from medtune.losses import SEG_LOSSES
from medtune.overlays import cam_overlay, overlay_side, save_cam_overlays
from medtune.report.write import _prediction_plots
from medtune.tasks import TASKS
from medtune.tasks.multilabel import MultiLabelTask
from medtune.tasks.segmentation import SegmentationTask
from tests.helpers import BASE, TASK_CONFIGS, build_one

KINDS = ("segmentation", "classification", "multilabel")
PER_IMAGE = {"segmentation": {"iou"}, "classification": {"labels", "probs"}, "multilabel": {"labels", "probs"}}
FIGURES = {"segmentation": {"images", "masks", "probs"}, "classification": {"images", "masks", "cams"}}


def _saved(preds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``preds`` after the round trip through ``test_predictions.npz`` (no pickles)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **preds)
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


@pytest.mark.e2e
@pytest.mark.filterwarnings("ignore:every HiResCAM")  # resnet18 at 32 px: a 1x1 CAM layer
@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_answers_its_predictions(task: str, task_caches: dict) -> None:
    config = {**BASE, **TASK_CONFIGS[task]}
    system, _ = build_one(task, config, task_caches)
    pred = task_caches["pred_masks"] if TASKS[task].needs_segmenter else None
    raw = evaluate.test_predictions(system, config, caches=task_caches["caches"], pred_masks=pred, max_overlays=3)
    preds = _saved(raw)
    kind = str(preds["report_kind"])
    n = len(load_cache(task_caches["caches"]["test"])["images"])
    # The saved kind is the system's, one the report draws; platform arguments are ones build provides.
    assert kind == system.report_kind and kind in KINDS
    assert set(system.platform_args) <= build.PROVIDED
    # Per-image arrays cover the whole test split, in the cache's image order.
    assert PER_IMAGE[kind] <= set(preds) and np.array_equal(preds["image_ids"], raw["image_ids"])
    assert all(len(preds[key]) == n for key in PER_IMAGE[kind])
    # Figure arrays: the first 3 images, present exactly when the task has something to draw.
    figures = FIGURES.get(kind, set()) if kind == "segmentation" or system.has_cam else set()
    assert figures <= set(preds) and all(len(preds[key]) == 3 for key in figures)
    assert ("cams" in preds) == system.has_cam
    # With a CAM, every test image has its saliency IoU and the ceiling of its CAM resolution.
    per_image_cam = {"saliency_iou", "saliency_ceiling", "cam_grid"}
    assert (per_image_cam <= set(preds)) == system.has_cam
    assert all(len(preds[key]) == n for key in per_image_cam & set(preds))


class _Bright(nn.Module):
    """A 'segmenter' that marks bright red pixels: logit = normalised red channel (> 0 above ~0.49)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images[:, :1]


def _lesion_cache(path: Path) -> str:
    """Three 8 px images: black and lesion-free; lesion-free with a bright patch; a lesion half found."""
    images = torch.zeros((3, 3, 8, 8), dtype=torch.uint8)
    masks = torch.zeros((3, 1, 8, 8), dtype=torch.uint8)
    images[1, :, :2, :2] = 255  # a prediction on an image without lesion
    masks[2, 0, 2:6, 2:6] = 1  # 16 lesion pixels, of which the top 8 are bright
    images[2, :, 2:4, 2:6] = 255
    labels = [torch.tensor([0])] * 3
    torch.save({"images": images, "masks": masks, "labels": labels, "image_ids": torch.arange(3)}, path)
    return str(path)


def test_logged_image_iou_and_saved_predictions_agree(tmp_path: Path) -> None:
    cache = _lesion_cache(tmp_path / "test.pt")
    caches = {"train": cache, "val": cache, "test": cache}
    config = {"data.batch_size": 2, "data.augment": 0.0}  # two batches: the mean is per image, not per batch
    system = SegmentationTask(_Bright(), SEG_LOSSES["bce"](), max_epochs=1)
    logged = make_trainer().test(system, datamodule=CachedDataModule(caches=caches, batch_size=2), verbose=False)[0]
    saved = evaluate.test_predictions(system, config, caches=caches)
    # Both empty -> 1; hallucinated lesion on a lesion-free image -> 0; 8 of 16 lesion pixels -> 0.5.
    np.testing.assert_allclose(saved["iou"], [1.0, 0.0, 0.5])
    # The logged metric is the mean of the saved per-image values (one rule, medtune.metrics).
    assert logged["test/image_iou"] == pytest.approx(float(saved["iou"].mean()))
    assert logged["test/fail_rate"] == pytest.approx(2 / 3)


@pytest.mark.filterwarnings("ignore:every HiResCAM")
def test_crop_mode_saves_the_view_the_classifier_saw(task_caches: dict) -> None:
    config = {**BASE, **TASK_CONFIGS["masked_classification"], "data.mask_mode": "crop"}
    system, data = build_one("masked_classification", config, task_caches)
    preds = evaluate.test_predictions(
        system, config, caches=task_caches["caches"], pred_masks=task_caches["pred_masks"], max_overlays=4
    )
    dataset = data.dataset("test")
    views = [dataset._view(i) for i in range(4)]
    # The saved images and masks are the crops, not the cached whole images.
    assert all(np.array_equal(preds["images"][i], views[i][0].numpy()) for i in range(4))
    assert all(np.array_equal(preds["masks"][i], views[i][1].numpy()) for i in range(4))
    assert any(not np.array_equal(preds["images"][i], dataset.images[i].numpy()) for i in range(4))


def test_platform_args_come_from_the_system_class() -> None:
    config = {"model.name": "resnet18"}
    # Multi-label declares no CAM layer (a CAM explains one class); segmentation no class count.
    assert build.platform_args(MultiLabelTask, config, num_classes=3, max_epochs=2) == {
        "max_epochs": 2,
        "num_classes": 3,
    }
    assert build.platform_args(SegmentationTask, config, num_classes=3, max_epochs=2) == {"max_epochs": 2}
    single = build.platform_args(TASKS["classification"].system, config, num_classes=3, max_epochs=2)
    assert single["cam_layer"] == "layer4" and single["num_classes"] == 3


def test_report_draws_by_report_kind_not_by_shape(tmp_path: Path) -> None:
    shaped = {"labels": np.zeros((4, 3), np.uint8), "probs": np.full((4, 3), 0.5, np.float32)}
    launch = SimpleNamespace(experiment="e", tags={}, predictions={**shaped, "report_kind": np.array("multilabel")})
    pngs, notes = _prediction_plots(launch, tmp_path)
    assert not pngs and "multi-label" in notes[0]
    # The same arrays without a kind are not guessed from their shapes.
    launch.predictions = shaped
    pngs, notes = _prediction_plots(launch, tmp_path)
    assert not pngs and "report_kind ''" in notes[0]


def test_published_pngs_and_report_share_the_renderer(tmp_path: Path) -> None:
    disc = np.zeros((1, 16, 16), np.uint8)
    disc[0, 4:12, 4:12] = 1
    preds = {
        "images": np.full((2, 3, 16, 16), 100, np.uint8),
        "masks": np.stack([disc, np.zeros_like(disc)]),
        "cams": np.stack([disc[0], disc[0]]).astype(np.float16),
        "saliency_iou": np.array([1.0, np.nan]),
        "labels": np.array([1, 0]),
        "probs": np.array([[0.2, 0.8], [0.9, 0.1]]),
        "image_ids": np.array([7, 9]),
    }
    paths = save_cam_overlays(preds, tmp_path, n=8)
    # One PNG per saved CAM, named from the arrays; no lesion -> 'na'.
    assert [p.name for p in paths] == ["cam_00_img7_true1_pred1_iou1.00.png", "cam_01_img9_true0_pred0_iouna.png"]
    import cv2

    written = cv2.cvtColor(cv2.imread(str(paths[0])), cv2.COLOR_BGR2RGB)
    # The PNG is exactly the renderer's output the report's saliency figure shows.
    side = overlay_side(16)
    assert np.array_equal(written, cam_overlay(preds["images"][0], preds["cams"][0], preds["masks"][0], side=side))


def test_report_draws_saved_segmentation_predictions(tmp_path: Path) -> None:
    cache = _lesion_cache(tmp_path / "test.pt")
    system = SegmentationTask(_Bright(), SEG_LOSSES["bce"](), max_epochs=1)
    saved = _saved(evaluate.test_predictions(system, {"data.augment": 0.0}, caches={"test": cache}))
    pngs, notes = _prediction_plots(SimpleNamespace(experiment="e", tags={}, predictions=saved), tmp_path / "r")
    # The segmentation kind gets its overlay figure, and nothing is skipped.
    assert set(pngs) == {"test"} and pngs["test"].read_bytes()[:4] == b"\x89PNG" and not notes
