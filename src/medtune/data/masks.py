"""COCO segmentations: which ones may reach pycocotools, their masks, and polygon areas.

pycocotools trusts its input (a NaN coordinate makes it allocate tens of GB), so every segmentation
is judged by :func:`mask_problem` first: by ``check`` (so by the launch's pre-training check), by
``coco.load_records`` and by :func:`segmentation_mask`, the one mask decoder of the dataset tools
and the training caches. No torch here: the tools must start fast.
"""

from __future__ import annotations

import math

import numpy as np

from medtune.data.cocoio import DataError


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
        if len(polygon) < 6:  # fewer than 3 points: never drawn (``segmentation_mask`` skips it), and [x] has no y
            continue
        xs, ys = polygon[0::2], polygon[1::2]
        if min(xs) < -width or max(xs) > 2 * width or min(ys) < -height or max(ys) > 2 * height:
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
