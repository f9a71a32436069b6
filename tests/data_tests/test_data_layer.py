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
from medtune.data.cocoio import atomic_file
from medtune.data.datasets import CachedDataModule, CachedDataset, build_transform
from medtune.data.masks import segmentation_mask


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
    # The cache's mask is the OR of masks.segmentation_mask over the annotations, as uint8.
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


def _masked_dataset(root: Path, segmentation: object, *, height: int = 16) -> Path:
    """train/val/test of three 16x16 images; annotation 1 (image 1 of train) gets ``segmentation``."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    for i in range(3):
        Image.new("L", (16, 16), color=60 * i).save(root / "images" / f"img{i}.png")
    for split in ("train", "val", "test"):
        images = [{"id": i + 1, "file_name": f"img{i}.png", "width": 16, "height": 16} for i in range(3)]
        anns = [
            {"id": i + 1, "image_id": i + 1, "category_id": 1, "segmentation": [[2, 2, 9, 2, 9, 9]]} for i in range(3)
        ]
        if split == "train":
            images[0]["height"], anns[0]["segmentation"] = height, segmentation
        coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "lesion"}]}
        (root / f"{split}.json").write_text(json.dumps(coco))  # NaN and Infinity, as Python's json writes them
    return root


BAD_MASKS = {
    "nan polygon": ([[float("nan"), 2, 9, 2, 9, 9]], "NaN or infinite coordinate"),
    "infinite polygon": ([[2, 2, float("inf"), 2, 9, 9]], "NaN or infinite coordinate"),
    "integer counts": (
        {"size": [16, 16], "counts": 31},
        "'counts' must be a list of run lengths or a compressed string",
    ),
    "negative counts": ({"size": [16, 16], "counts": [-5, 261]}, "non-negative integers"),
    "garbage string": ({"size": [16, 16], "counts": "zz~~\x7f"}, "not a compressed RLE string"),
    "short counts": ({"size": [16, 16], "counts": [3, 2]}, "cover 5 pixels, expected 16*16 = 256"),
    "short compressed": ({"size": [16, 16], "counts": "0P4"}, "cover 128 pixels, expected 16*16 = 256"),
    "rle size": ({"size": [8, 32], "counts": [256]}, "'size' is [8, 32], expected [16, 16]"),
}


@pytest.mark.parametrize("name", list(BAD_MASKS))
def test_bad_masks_are_refused_in_one_line_before_decoding(tmp_path: Path, name: str, capsys) -> None:
    from medtune.data.__main__ import main as data_main
    from medtune.prepare.inputs import check_dataset

    segmentation, expected = BAD_MASKS[name]
    data = _masked_dataset(tmp_path / "data", segmentation)
    train = data / "train.json"
    # check: one problem line naming the image, annotation 1 and what was expected; exit 1 (problems found).
    assert data_main(["check", "--coco", str(train)]) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if "annotation 1" in line]
    assert len(lines) == 1 and expected in lines[0] and "malformed_entry" in lines[0], lines
    # The launch's pre-training check refuses the dataset, with a line naming the file.
    dataset = resolve_dataset(data, cache_root=tmp_path / "cache")
    with pytest.raises(DataError) as err:
        check_dataset(dataset)
    assert any(line.startswith(str(train)) and expected in line for line in str(err.value).splitlines()), err.value
    # The cache build (for callers that skip the check) refuses it too: one line, no file written.
    with pytest.raises(DataError) as err:
        build_cache(dataset, "train", 16, tmp_path / "cache")
    assert (
        "\n" not in str(err.value)
        and str(err.value).startswith(f"{train}: annotation 1 ")
        and expected in str(err.value)
    )
    assert not (tmp_path / "cache" / "data").exists() or not list((tmp_path / "cache" / "data").iterdir())


def test_rle_sized_like_its_entry_but_not_its_file_is_one_line(tmp_path: Path) -> None:
    # The COCO entry says 20 rows, the file has 16: the RLE agrees with the entry, so the fast check passes.
    data = _masked_dataset(tmp_path / "data", {"size": [20, 16], "counts": [320]}, height=20)
    dataset = resolve_dataset(data, cache_root=tmp_path / "cache")
    with pytest.raises(DataError) as err:
        build_cache(dataset, "train", 16, tmp_path / "cache")
    message = str(err.value)
    assert (
        "\n" not in message
        and message.startswith(f"{data / 'train.json'}: image 1 (img0.png")
        and "annotation 1" in message
    )
    assert "'size' is [20, 16], expected [16, 16]" in message
    assert not list((tmp_path / "cache" / "data").iterdir())  # nothing written, not even a temporary file


def test_compressed_rle_decoder_agrees_with_pycocotools() -> None:
    from pycocotools import mask as mask_utils

    from medtune.data.masks import mask_problem

    rng = np.random.default_rng(0)
    for _ in range(50):
        height, width = (int(v) for v in rng.integers(1, 40, 2))
        block = np.asfortranarray(rng.random((height, width)) < rng.random(), dtype=np.uint8)
        counts = mask_utils.encode(block)["counts"].decode()
        # Every mask pycocotools encodes passes the rule and decodes back to itself.
        assert mask_problem({"size": [height, width], "counts": counts}, (height, width)) is None
        assert (segmentation_mask({"size": [height, width], "counts": counts}, height, width) == block).all()
