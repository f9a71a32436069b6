"""Decode and resize a split's images and masks once, into a tensor file shared by all trials.

Images are letterboxed: the longest side is resized to ``size`` and the rest padded with zeros, so
lesions keep their shape. The cache file holds uint8 ``images`` [N,3,S,S], ``masks`` [N,1,S,S]
(lesion = 1), the label sets and the image ids.
Trials open it with ``torch.load(mmap=True, weights_only=True)``, so memory is shared, not copied.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from medtune.data.coco import DataError, Dataset, Records, load_records
from medtune.data.cocoio import atomic_file, segmentation_mask

CACHE_VERSION = "1"


def cache_path(dataset: Dataset, split: str, size: int, cache_root: Path) -> Path:
    """Where the cache of ``split`` at ``size`` px lives; the key covers the COCO file and images dir."""
    digest = hashlib.sha256(dataset.coco_files[split].read_bytes()).hexdigest()
    key = hashlib.sha256(f"{CACHE_VERSION}|{digest}|{dataset.images_dirs[split]}|{size}".encode()).hexdigest()[:16]
    return cache_root / "data" / f"{dataset.name}-{split}-{size}px-{key}.pt"


def _decode(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path}: unreadable image ({err})") from None


def _mask(segmentations: list, height: int, width: int) -> np.ndarray:
    """uint8 (height, width) union of an image's annotations (``cocoio.segmentation_mask`` each)."""
    out = np.zeros((height, width), dtype=bool)
    for seg in segmentations:
        out |= segmentation_mask(seg, height, width)
    return out.astype(np.uint8)


def save_tensors(tensors: dict, path: Path) -> Path:
    """``torch.save`` through ``cocoio.atomic_file``: concurrent builders never see half a file."""
    with atomic_file(path) as tmp:
        torch.save(tensors, tmp)
    return path


def letterbox(img: Image.Image, size: int, resample: int) -> np.ndarray:
    """Resize the longest side to ``size`` and pad to a square with zeros."""
    w, h = img.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = np.asarray(img.resize((nw, nh), resample))
    top, left = (size - nh) // 2, (size - nw) // 2
    shape = (size, size) + resized.shape[2:]
    out = np.zeros(shape, dtype=np.uint8)
    out[top : top + nh, left : left + nw] = resized
    return out


def _encode_split(records: Records, size: int) -> dict[str, torch.Tensor]:
    n = len(records.paths)
    images = torch.zeros((n, 3, size, size), dtype=torch.uint8)
    masks = torch.zeros((n, 1, size, size), dtype=torch.uint8)
    for i, path in enumerate(records.paths):
        img = _decode(path)
        mask = Image.fromarray(_mask(records.segmentations[i], img.height, img.width) * 255)
        arr = letterbox(img, size, Image.BILINEAR)
        marr = letterbox(mask, size, Image.BILINEAR)
        images[i] = torch.from_numpy(arr).permute(2, 0, 1)
        masks[i, 0] = torch.from_numpy((marr >= 128).astype(np.uint8))
    return {"images": images, "masks": masks, "image_ids": torch.tensor(records.image_ids)}


def build_cache(dataset: Dataset, split: str, size: int, cache_root: Path) -> Path:
    """Build (once) and return the cache file of ``split`` at ``size`` px."""
    path = cache_path(dataset, split, size, cache_root)
    if path.is_file():
        return path
    records = load_records(dataset, split)
    tensors = _encode_split(records, size)
    tensors["labels"] = [torch.tensor(labels, dtype=torch.long) for labels in records.labels]
    return save_tensors(tensors, path)


def load_cache(path: str | Path) -> dict:
    """Open a cache file memory-mapped and without unpickling arbitrary objects."""
    return torch.load(path, mmap=True, weights_only=True)
