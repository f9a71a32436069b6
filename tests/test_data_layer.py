"""COCO data layer: dataset resolution, decoded caches, datasets and masking."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medtune.data.cache import build_cache, load_cache, save_tensors
from medtune.data.coco import DataError, resolve_dataset
from medtune.data.cocoio import atomic_file, segmentation_mask
from medtune.data.datasets import CachedDataModule, CachedDataset, build_transform


def test_resolve_folder(synth_dir: Path, tmp_path: Path) -> None:
    dataset = resolve_dataset(synth_dir, cache_root=tmp_path)
    assert dataset.num_classes == 3 and dataset.images_dirs["train"] == synth_dir / "images"
    # The fingerprint depends on the split files and the image bytes: same data, same fingerprint.
    assert resolve_dataset(synth_dir, cache_root=tmp_path).fingerprint == dataset.fingerprint


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "test.json").unlink(), "missing"),
        (lambda d: (d / "val.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "val.json").write_text(json.dumps({"images": []})), "key 'annotations' missing"),
    ],
)
def test_broken_dataset_is_one_line(synth_dir: Path, tmp_path: Path, damage, message: str) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(synth_dir, copy)
    damage(copy)
    with pytest.raises(DataError, match=message) as err:
        resolve_dataset(copy, cache_root=tmp_path)
    assert "\n" not in str(err.value)


def test_single_coco_file_is_split_once(synth_dir: Path, tmp_path: Path) -> None:
    dataset = resolve_dataset(synth_dir / "train.json", cache_root=tmp_path, seed=0)
    sizes = [len(json.loads(dataset.coco_files[s].read_text())["images"]) for s in ("train", "val", "test")]
    # Every image of the one file lands in exactly one split, and the images are still found.
    assert sum(sizes) == len(json.loads((synth_dir / "train.json").read_text())["images"]) and min(sizes) > 0
    assert dataset.images_dirs["val"] == (synth_dir / "images").resolve()


def test_cache_holds_decoded_resized_images_and_masks(synth_dir: Path, tmp_path: Path) -> None:
    dataset = resolve_dataset(synth_dir, cache_root=tmp_path)
    path = build_cache(dataset, "train", 24, tmp_path)
    data = load_cache(path)
    n = len(json.loads((synth_dir / "train.json").read_text())["images"])
    assert data["images"].shape == (n, 3, 24, 24) and data["images"].dtype == torch.uint8
    assert data["masks"].shape == (n, 1, 24, 24) and set(data["masks"].unique().tolist()) <= {0, 1}
    # Every synthetic image has one lesion, so every mask has foreground.
    assert bool((data["masks"].flatten(1).sum(1) > 0).all())
    mtime = path.stat().st_mtime_ns
    assert build_cache(dataset, "train", 24, tmp_path) == path and path.stat().st_mtime_ns == mtime  # built once


def _pred_cache(tmp_path: Path, cache: Path, value: int) -> str:
    masks = load_cache(cache)["masks"]
    path = tmp_path / f"pred{value}.pt"
    torch.save({"probs": torch.full_like(masks, value)}, path)
    return str(path)


@pytest.mark.parametrize(
    "mode, prob, expect_black", [("soft", 0, True), ("hard", 100, True), ("hard", 200, False), ("soft", 255, False)]
)
def test_masked_images(synth_dir: Path, tmp_path: Path, mode: str, prob: int, expect_black: bool) -> None:
    dataset = resolve_dataset(synth_dir, cache_root=tmp_path)
    cache = build_cache(dataset, "val", 32, tmp_path)
    raw = CachedDataset(str(cache), build_transform(0.0, train=False))
    masked = CachedDataset(
        str(cache), build_transform(0.0, train=False), pred_masks=_pred_cache(tmp_path, cache, prob), mask_mode=mode
    )
    item, reference = masked[0], raw[0]
    black = CachedDataset(str(cache), build_transform(0.0, train=False))
    black.images = torch.zeros_like(black.images)
    # An empty predicted mask gives exactly the normalised black image (no NaN, no division).
    if expect_black:
        assert torch.allclose(item["image"], black[0]["image"])
    else:
        assert torch.allclose(item["image"], reference["image"], atol=0.05)
    assert torch.isfinite(item["image"]).all() and item["label"].ndim == 0


def test_augmentation_keeps_masks_binary_and_shapes(synth_dir: Path, tmp_path: Path) -> None:
    dataset = resolve_dataset(synth_dir, cache_root=tmp_path)
    caches = {s: str(build_cache(dataset, s, 32, tmp_path)) for s in ("train", "val", "test")}
    data = CachedDataModule(caches=caches, batch_size=4, augment=1.0)
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["mask"].shape == (4, 1, 32, 32)
    # Masks are resampled with nearest neighbour: still exactly 0 or 1 after rotation and scaling.
    assert set(batch["mask"].unique().tolist()) <= {0.0, 1.0}


def test_unknown_mask_mode_lists_valid(synth_dir: Path, tmp_path: Path) -> None:
    dataset = resolve_dataset(synth_dir, cache_root=tmp_path)
    cache = build_cache(dataset, "val", 32, tmp_path)
    with pytest.raises(ValueError, match="valid: none, soft, hard"):
        CachedDataset(str(cache), build_transform(0.0, train=False), mask_mode="blur")


def test_annotations_of_an_image_are_united_by_the_one_decoder() -> None:
    from pycocotools import mask as mask_utils

    from medtune.data.cache import _mask

    square = [[1, 1, 4, 1, 4, 4, 1, 4]]  # polygon: pixels (1..3, 1..3) of a 6x8 image
    block = np.zeros((6, 8), dtype=np.uint8, order="F")
    block[4:6, 5:8] = 1
    rle = mask_utils.encode(block)
    rle["counts"] = rle["counts"].decode()  # as JSON stores compressed RLE
    union = _mask([square, rle, [[0, 0, 1, 1]]], 6, 8)  # the last polygon has 2 points: skipped
    # The cache's mask is the OR of cocoio.segmentation_mask over the annotations, as uint8.
    expected = segmentation_mask(square, 6, 8) | segmentation_mask(rle, 6, 8)
    assert union.dtype == np.uint8 and (union == expected).all()
    assert union.sum() == segmentation_mask(square, 6, 8).sum() + 6 and union[4:6, 5:8].all()


def test_atomic_file_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "cache.pt"
    save_tensors({"x": torch.arange(3)}, target)
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_bytes(b"half a file")
        raise RuntimeError("interrupted")
    # The previous content survives and no temporary file is left beside it.
    assert torch.equal(load_cache(target)["x"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.pt", "cache.pt.sha256"]
