"""Decode and resize a split's images and masks once, into a tensor file shared by all trials.

Images are letterboxed: the longest side is resized to ``size`` and the rest padded with zeros, so
lesions keep their shape. The cache file holds uint8 ``images`` [N,3,S,S], ``masks`` [N,1,S,S]
(lesion = 1), the label sets and the image ids.
The driver opens it with ``torch.load(mmap=True, weights_only=True)``, so memory is shared, not copied;
trials get it from the driver through Ray (``medtune.data.shared``), never from this folder.
The build streams: images are decoded one at a time and written in batches of ``BATCH`` into the file
(``medtune.data.streamed``), so its memory does not grow with the split (20,000 images at 224 px are
4 GB of cache: 3 GB of images, 1 GB of masks).
Images are decoded by ``medtune.data.imageio.read_image`` (EXIF orientation, 16-bit and DICOM scaling).

The file name's key covers the split's content digest (its COCO file and every image's bytes,
``medtune.data.coco``), so replacing an image builds a new file. Every file written by
:func:`save_tensors` gets a sidecar ``<file>.sha256`` (its byte size and sha256, written after the
data); :func:`cache_ok` checks both on open (sha256 of 100 MB took 0.08 s here, from page cache), and
:func:`build_cache` rebuilds a file that fails, saying why. A file without a sidecar (written before
checksums, or by another tool) cannot be verified and is rebuilt once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medtune.data.coco import Dataset, Records, load_records
from medtune.data.cocoio import DataError, atomic_file
from medtune.data.imageio import read_image
from medtune.data.masks import segmentation_mask
from medtune.data.streamed import Stream, save_streamed

CACHE_VERSION = "2"  # 2: images decoded by imageio.read_image (EXIF, 16-bit, DICOM); key covers image bytes
SIDECAR = ".sha256"  # suffix added to a cache file's name for its size and checksum
BATCH = 32  # images encoded per write: 4.8 MB of images at 224 px, a few ms of writing between decodes


def cache_path(dataset: Dataset, split: str, size: int, cache_root: Path) -> Path:
    """Where the cache of ``split`` at ``size`` px lives; the key covers the COCO file, images and images dir."""
    digest = dataset.content_digests[split]
    key = hashlib.sha256(f"{CACHE_VERSION}|{digest}|{dataset.images_dirs[split]}|{size}".encode()).hexdigest()[:16]
    return cache_root / "data" / f"{dataset.name}-{split}-{size}px-{key}.pt"


def _mask(segmentations: list, height: int, width: int, ids: list | None = None) -> np.ndarray:
    """uint8 (height, width) union of an image's annotations (``masks.segmentation_mask`` each).

    A segmentation the decoder refuses raises :class:`DataError` naming its annotation id (``ids``).
    """
    out = np.zeros((height, width), dtype=bool)
    for k, seg in enumerate(segmentations):
        try:
            out |= segmentation_mask(seg, height, width)
        except DataError as err:
            raise DataError(f"annotation {ids[k] if ids else k}: {err}") from None
    return out.astype(np.uint8)


def save_tensors(tensors: dict, path: Path, *, stream: Stream | None = None) -> Path:
    """``torch.save`` through ``cocoio.atomic_file``, then the sidecar with its size and sha256.

    Concurrent builders never see half a file; a process killed between the two writes leaves a
    file that :func:`cache_ok` rejects, so it is rebuilt. With ``stream``, its entries are written
    from its batches (``medtune.data.streamed.save_streamed``), the same file without holding them.
    """
    path = Path(path)
    with atomic_file(path) as tmp:
        if stream is None:
            torch.save(tensors, tmp)
        else:
            save_streamed(tensors, tmp, stream)
        record = {"bytes": tmp.stat().st_size, "sha256": _sha256(tmp)}
    with atomic_file(sidecar_path(path)) as tmp:
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
    return path


def sidecar_path(path: Path) -> Path:
    """The sidecar of cache file ``path``: ``<file>.sha256``."""
    return Path(path).with_name(Path(path).name + SIDECAR)


def cache_problem(path: Path) -> str | None:
    """Why the cache file ``path`` cannot be trusted, or None when its size and sha256 match its sidecar."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    try:
        record = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
        expected, checksum = int(record["bytes"]), str(record["sha256"])
    except FileNotFoundError:
        return f"unverifiable (no checksum file {sidecar_path(path).name}: written before cache checksums)"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"corrupt or truncated (bad checksum file {sidecar_path(path).name}: {type(err).__name__})"
    actual = path.stat().st_size
    if actual != expected:
        return f"corrupt or truncated ({actual} bytes, checksum file says {expected})"
    if _sha256(path) != checksum:
        return "corrupt or truncated (sha256 differs from its checksum file)"
    return None


def cache_ok(path: Path) -> bool:
    """Whether the cache file ``path`` exists and matches its sidecar (byte size, then full sha256)."""
    return cache_problem(path) is None


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


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


def _encode(path: Path, segmentations: list, size: int, ids: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One image letterboxed as uint8 [3,S,S] and its lesion mask as uint8 [1,S,S] (lesion = 1).

    The masks are decoded at the image file's size: an RLE sized by a COCO entry that disagrees with
    the file raises :class:`DataError` (``ids``: the annotation ids, for the message).
    """
    img = read_image(path)
    mask = Image.fromarray(_mask(segmentations, img.height, img.width, ids) * 255)
    image = letterbox(img, size, Image.BILINEAR).transpose(2, 0, 1)
    lesion = letterbox(mask, size, Image.BILINEAR) >= 128
    return image, lesion[None].astype(np.uint8)


def _batches(records: Records, size: int, source: Path) -> Iterator[dict[str, np.ndarray]]:
    """``images`` and ``masks`` of ``BATCH`` images at a time, in the split's order (``source``: the COCO file)."""
    for start in range(0, len(records.paths), BATCH):
        rows = range(start, min(start + BATCH, len(records.paths)))
        encoded = [_encoded(records, i, size, source) for i in rows]
        yield {"images": np.stack([e[0] for e in encoded]), "masks": np.stack([e[1] for e in encoded])}


def _encoded(records: Records, i: int, size: int, source: Path) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_encode` of image ``i``; a refused mask's error names the COCO file, the image and its size there."""
    ids = records.annotation_ids[i] if records.annotation_ids else None
    try:
        return _encode(records.paths[i], records.segmentations[i], size, ids)
    except DataError as err:
        if str(err).startswith(str(records.paths[i])):  # read_image's own line names the file
            raise
        height, width = records.sizes[i]
        where = (
            f"image {records.image_ids[i]} ({records.paths[i].name}; height {height}, width {width} in the COCO file)"
        )
        raise DataError(f"{source}: {where}: {err}") from None


def build_cache(dataset: Dataset, split: str, size: int, cache_root: Path) -> Path:
    """Build (once) and return the cache file of ``split`` at ``size`` px."""
    path = cache_path(dataset, split, size, cache_root)
    if path.is_file():
        problem = cache_problem(path)
        if problem is None:
            return path
        print(f"[cache] {path}: {problem}; rebuilding", flush=True)
    records = load_records(dataset, split)
    n = len(records.paths)
    tensors = {  # images and masks are placeholders (never touched), written from the batches
        "images": torch.empty((n, 3, size, size), dtype=torch.uint8),
        "masks": torch.empty((n, 1, size, size), dtype=torch.uint8),
        "image_ids": torch.tensor(records.image_ids),
        "labels": [torch.tensor(labels, dtype=torch.long) for labels in records.labels],
    }
    batches = _batches(records, size, dataset.coco_files[split])
    return save_tensors(tensors, path, stream=Stream(("images", "masks"), batches))


CacheSource = str | Path | Mapping  # a cache file, or a cache already open (``medtune.data.shared``)


def load_cache(source: CacheSource) -> dict:
    """Open a cache file memory-mapped and without unpickling arbitrary objects.

    A cache already open (the dict of its tensors, as a trial receives it from the driver through Ray,
    ``medtune.data.shared``) is returned as it is: datasets and loss weights take either.
    """
    if isinstance(source, Mapping):
        return dict(source)
    return torch.load(source, mmap=True, weights_only=True)
