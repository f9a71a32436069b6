"""Shared helpers for the dataset tools (``python -m medtune.data ...``).

Loading a COCO file with one-line errors, finding its image folder, writing JSON atomically, masks
from polygons (pycocotools, as the training loader does) and image content hashes. No torch here:
the tools must start fast.

Image folder convention, in order: ``--images DIR``; else ``info.images_dir`` in the COCO file
(written by ``split`` and the other tools when their output lies away from the images); else the
folder ``images/`` next to the JSON if it exists; else the JSON's own folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np


class DataError(ValueError):
    """A user-facing dataset problem; its message is one line naming the file and key."""


def fail(err: Exception) -> int:
    """Print ``err`` as one line on stderr and return the exit status for user errors (2)."""
    print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
    return 2


def load_coco(path: Path) -> dict:
    """Read a COCO JSON file; raises :class:`DataError` naming the file and the bad key."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a COCO JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with 'images', 'annotations', 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: key '{key}' missing or not a list")
    if not isinstance(data.get("info", {}), dict):
        raise DataError(f"{path}: key 'info' must be an object")
    return data


REQUIRED_KEYS = {
    "images": {"id": int, "file_name": str},
    "annotations": {"id": int, "image_id": int, "category_id": int},
    "categories": {"id": int, "name": str},
}


def require_keys(path: Path, coco: dict) -> dict:
    """Raise :class:`DataError` at the first entry lacking a key the tools rely on; returns ``coco``."""
    for key, fields in REQUIRED_KEYS.items():
        for i, entry in enumerate(coco[key]):
            for name, kind in fields.items():
                value = entry.get(name) if isinstance(entry, dict) else None
                if not isinstance(value, kind) or isinstance(value, bool):
                    raise DataError(
                        f"{path}: {key}[{i}] needs {kind.__name__} '{name}' (run `python -m medtune.data check`)"
                    )
    return coco


def images_dir_for(coco_path: Path, coco: dict, images: Path | None = None) -> Path:
    """The absolute image folder of ``coco_path`` (see the module docstring for the order)."""
    coco_path = Path(coco_path)
    if images is not None:
        found = Path(images).expanduser()
        if not _is_dir(found):
            raise DataError(f"--images {images}: no such folder")
        return found.resolve()
    explicit = (coco.get("info") or {}).get("images_dir")
    if explicit is not None and (not isinstance(explicit, str) or "\0" in explicit):
        raise DataError(f"{coco_path}: key 'info.images_dir': expected a folder path, got {explicit!r:.80}")
    if explicit:
        try:
            found = (coco_path.parent / Path(explicit).expanduser()).resolve()
        except RuntimeError:  # "~someone" with no such user
            raise DataError(f"{coco_path}: key 'info.images_dir': cannot expand {explicit!r:.80}") from None
        if not _is_dir(found):
            raise DataError(
                f"{coco_path}: key 'info.images_dir': no such folder {str(found)!r:.200} (or pass --images)"
            )
        return found
    return default_images_dir(coco_path)


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):  # name too long, embedded NUL byte
        return False


def default_images_dir(coco_path: Path) -> Path:
    """``images/`` next to the JSON if that folder exists, else the JSON's folder (absolute)."""
    beside = Path(coco_path).parent / "images"
    return beside.resolve() if beside.is_dir() else Path(coco_path).parent.resolve()


def record_images_dir(coco: dict, out_path: Path, images_dir: Path) -> dict:
    """Write ``info.images_dir`` into ``coco`` unless ``out_path`` would find ``images_dir`` anyway."""
    info = dict(coco.get("info") or {})
    info.pop("images_dir", None)
    if default_images_dir(out_path) != Path(images_dir).resolve():
        info["images_dir"] = str(Path(images_dir).resolve())
    coco["info"] = info
    return coco


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` that replaces ``path`` (``os.replace``) when the body succeeds.

    The one atomic write of the project (JSON here, tensor caches in ``medtune.data.cache``):
    readers, including concurrent builders of the same file, never see half a file; on failure the
    temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: object) -> None:
    """Write ``obj`` as JSON to ``path`` through ``atomic_file`` (never half-written)."""
    try:
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    except OSError as err:
        raise DataError(f"{path}: cannot write ({err.strerror})") from None


def escapes(file_name: str) -> str | None:
    """How ``file_name`` would leave the image folder ('absolute' or 'escaping' by '..'), or None."""
    if PurePosixPath(file_name).is_absolute() or PureWindowsPath(file_name).is_absolute():
        return "absolute"
    if file_name.startswith(("/", "\\")) or PureWindowsPath(file_name).drive:
        return "absolute"
    if ".." in PureWindowsPath(file_name).parts:  # Windows parts split on both / and \
        return "escaping"
    return None


def polygon_area(polygon: list[float]) -> float:
    """Shoelace area of one flat COCO polygon ``[x0, y0, x1, y1, ...]``."""
    xy = np.asarray(polygon, dtype=float).reshape(-1, 2)
    x, y = xy[:, 0], xy[:, 1]
    with np.errstate(over="ignore", invalid="ignore"):  # coordinates near 1e300: an infinite area, not zero
        return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


RLE_DIGITS = 6  # 6-bit characters per compressed run: 30 bits, runs up to 2**29 (pycocotools' C shifts an int)


def mask_problem(segmentation: object, size: tuple[int, int] | None = None) -> str | None:
    """Why ``segmentation`` is not a decodable COCO segmentation of a ``size`` (height, width) image, or None.

    The one rule for what may reach pycocotools, applied by ``check`` (so by the launch's
    pre-training check), ``coco.load_records`` and :func:`segmentation_mask`. pycocotools trusts
    its input: a NaN coordinate makes it allocate tens of GB, RLE counts short of height*width give
    a wrong mask, an integer or negative count a traceback. Polygons: lists of finite numbers. RLE:
    'size' [height, width] equal to the image's (``size``; not compared when None), 'counts' a list
    of non-negative integers or a compressed string (``rleToString``) whose runs sum to height*width.
    """
    if isinstance(segmentation, dict):
        return _rle_problem(segmentation, size)
    if not isinstance(segmentation, list) or not all(isinstance(p, list) for p in segmentation):
        return "'segmentation' must be a list of polygons or an RLE object"
    for k, polygon in enumerate(segmentation):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in polygon):
            return f"polygon {k} has non-numeric coordinates"
        if not all(_finite(v) for v in polygon):
            return f"polygon {k} has a NaN or infinite coordinate (expected finite pixel positions x, y)"
    return None


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond float range
        return False


def _rle_problem(rle: dict, size: tuple[int, int] | None) -> str | None:
    """:func:`mask_problem` for an RLE object."""
    shape, counts = rle.get("size"), rle.get("counts")
    expected = f"[{size[0]}, {size[1]}] (the image's height, width)" if size else "[height, width]"
    if not (isinstance(shape, list) and len(shape) == 2 and all(_count(v) and v > 0 for v in shape)):
        return f"RLE 'size' must be {expected}, got {shape!r:.40}"
    if size is not None and list(shape) != list(size):
        return f"RLE 'size' is {shape}, expected {expected}"
    if isinstance(counts, (str, bytes)):
        runs = _compressed_runs(counts)
        if isinstance(runs, str):
            return runs
    elif isinstance(counts, list):
        if not all(_count(c) for c in counts):
            return "RLE 'counts' must be non-negative integers (run lengths)"
        runs = counts
    else:
        return f"RLE 'counts' must be a list of run lengths or a compressed string, got {type(counts).__name__}"
    height, width = shape
    if sum(runs) != height * width:
        return f"RLE 'counts' cover {sum(runs)} pixels, expected {height}*{width} = {height * width}"
    return None


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _compressed_runs(counts: str | bytes) -> list[int] | str:
    """The run lengths of compressed RLE ``counts`` (pycocotools' ``rleFrString``), or why it is malformed.

    Each run is up to ``RLE_DIGITS`` characters '0'..'o' (6 bits: 5 of value, 1 "more follows"; the
    last one's bit 4 is the sign); from the fourth run on, a run is stored as its difference to the
    run two before it.
    """
    if isinstance(counts, str) and not counts.isascii():
        return "RLE 'counts' is not a compressed RLE string (characters '0'..'o' only)"
    data = counts.encode("ascii") if isinstance(counts, str) else counts
    runs: list[int] = []
    value = digits = 0
    for byte in data:
        digit = byte - 48
        if not 0 <= digit < 64:
            return f"RLE 'counts' is not a compressed RLE string ({chr(byte)!r}; characters '0'..'o' only)"
        value |= (digit & 0x1F) << (5 * digits)
        digits += 1
        if digit & 0x20:
            if digits == RLE_DIGITS:
                return f"RLE 'counts' run {len(runs)} is longer than {RLE_DIGITS} characters"
            continue
        if digit & 0x10:
            value -= 1 << (5 * digits)  # sign extension
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            return f"RLE 'counts' run {len(runs)} is negative ({value})"
        runs.append(value)
        value = digits = 0
    if digits:
        return "RLE 'counts' ends in the middle of a run"
    return runs


def _reach_problem(segmentation: list, height: int, width: int) -> str | None:
    """Whether a polygon reaches more than one image side outside the image (pycocotools' memory grows with it)."""
    for k, polygon in enumerate(segmentation):
        xs, ys = polygon[0::2], polygon[1::2]
        if xs and (min(xs) < -width or max(xs) > 2 * width or min(ys) < -height or max(ys) > 2 * height):
            return f"polygon {k} reaches x {min(xs)}..{max(xs)}, y {min(ys)}..{max(ys)}, far outside the {width}x{height} image"
    return None


def segmentation_mask(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """Boolean ``(height, width)`` mask of a COCO segmentation (polygons or RLE) via pycocotools.

    The one COCO mask decoder: the dataset tools and the training caches (``medtune.data.cache``)
    both call it. Polygons with fewer than 3 points are skipped; RLE may be compressed or not.
    Raises :class:`DataError` (no file named: callers add it) when :func:`mask_problem` finds a
    problem or a polygon reaches more than one image side outside, before pycocotools sees it.
    """
    from pycocotools import mask as mask_utils

    problem = mask_problem(segmentation, (height, width))
    if problem is None and isinstance(segmentation, list):
        problem = _reach_problem(segmentation, height, width)
    if problem is not None:
        raise DataError(problem)
    if isinstance(segmentation, dict):
        rle = segmentation
        if isinstance(rle["counts"], list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(rle, height, width)
        return mask_utils.decode(rle).astype(bool)
    polygons = [[float(v) for v in poly] for poly in segmentation if len(poly) >= 6]
    if not polygons:
        return np.zeros((height, width), dtype=bool)
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    return mask_utils.decode(rle).astype(bool)


def pixel_hash(path: Path) -> tuple[str, tuple[int, int]]:
    """Hash of the decoded pixels of an image and its ``(width, height)``.

    Grey RGB and single-channel copies of the same picture hash alike, as do opaque RGBA and RGB;
    identical bytes always give identical pixels. Raises ``OSError``/``ValueError`` if unreadable.
    """
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if img.mode in ("P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV"):
            img = img.convert("RGBA")
        arr = np.asarray(img)
        size = img.size
    if arr.ndim == 3 and arr.shape[2] in (2, 4) and (arr[..., -1] == np.iinfo(arr.dtype).max).all():
        arr = arr[..., :-1]  # opaque alpha carries nothing
    if (
        arr.ndim == 3
        and arr.shape[2] == 3
        and (arr[..., 0] == arr[..., 1]).all()
        and (arr[..., 1] == arr[..., 2]).all()
    ):
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    digest = hashlib.sha256(f"{arr.shape}{arr.dtype.str}".encode())
    digest.update(np.ascontiguousarray(arr).tobytes())
    return digest.hexdigest(), size
