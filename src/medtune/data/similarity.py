"""How alike two grey thumbnails are, allowing for a crop, a shift and a small rotation.

The similarity of two thumbnails is the zero-mean normalised cross-correlation (NCC) of the inner
pixels of one with the other resampled under the best warp: a crop factor per axis, a position and
an angle. Two stages keep it cheap and precise: a fixed grid of warps, computed once per image
however many pairs the image is in, then a local search around the best grid warp of each pair
(pairs that score high enough to matter). NCC ignores brightness and contrast; the margin ignores
the corners that a rotation fills. ``medtune.data.duplicates`` uses it to confirm hash candidates.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import numpy as np

THUMB = 32  # thumbnail side: keeps hairs and speckle, 4 KB per image
MARGIN = 5  # thumbnail pixels per side left out of the correlation: rotated-in corners, crops
SCALES = (0.9, 0.95, 1.0)  # crop factors tried per axis: the copies keep >= 90% of each side
ANGLES = (-3.0, 0.0, 3.0)  # rotations tried, in degrees: copies are rotated up to 5
OFFSETS = 3  # crop positions tried per axis and scale: first, middle, last
# Local search: steps of (angle in degrees, scale x, scale y, offset x, offset y in pixels), halved
# each round; a step is half the grid's spacing, so the search reaches every warp between grid points.
STEPS = (1.5, 0.025, 0.025, 0.8, 0.8)
ROUNDS = 2
REFINE_FROM = 0.8  # pairs below this after the grid are far from any threshold worth using
# Content weights (see content_weights): a pixel whose spread over the dataset is under 10% of the
# typical spread is frame (weight 0), over 30% content (weight 1); the typical spread is the 90th
# percentile over pixels, so a frame covering most of the picture does not set it.
MIN_IMAGES = 20
STAT_IMAGES = 4096  # images sampled for the statistics: percentiles of 4 MB, any dataset size
REF_QUANTILE = 90
FLAT_SHARE = 0.1
CONTENT_SHARE = 0.3
COARSE = 5  # cells per side of the cheap prefilter (4 x 4 thumbnail pixels each)


def thumbnail(image: object) -> np.ndarray:
    """The ``THUMB`` x ``THUMB`` grey thumbnail of a PIL image (box filter: every pixel counts)."""
    from PIL import Image

    return np.asarray(image.convert("L").resize((THUMB, THUMB), Image.BOX), dtype=np.float32)


def _coordinates(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where warps ``params`` (K x 5: angle in radians, fx, fy, ox, oy) take the inner pixels: x, y (K x P).

    Warp ``k`` maps the inner ``P`` pixels of one thumbnail to where they lie in the other, if that
    one were the original and this one its crop; coordinates are pixel indices (pixel ``i`` spans
    ``i - 0.5`` to ``i + 0.5``), clipped to the thumbnail.
    """
    inner = np.arange(MARGIN, THUMB - MARGIN) + 0.5 - THUMB / 2
    u, v = (a.ravel()[None] for a in np.meshgrid(inner, inner))
    angle, fx, fy, ox, oy = (params[:, i : i + 1] for i in range(5))
    dx, dy = fx * u, fy * v
    x = ox + fx * THUMB / 2 + dx * np.cos(angle) - dy * np.sin(angle) - 0.5
    y = oy + fy * THUMB / 2 + dx * np.sin(angle) + dy * np.cos(angle) - 0.5
    return np.clip(x, 0, THUMB - 1.001), np.clip(y, 0, THUMB - 1.001)


def _bilinear(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear sampling at pixel coordinates ``x``, ``y`` (inside the thumbnail): flat indices and weights, each (4, ...)."""
    x0, y0 = x.astype(int), y.astype(int)
    wx, wy = x - x0, y - y0
    index = np.stack([y0 * THUMB + x0, y0 * THUMB + x0 + 1, (y0 + 1) * THUMB + x0, (y0 + 1) * THUMB + x0 + 1])
    weight = np.stack([(1 - wx) * (1 - wy), wx * (1 - wy), (1 - wx) * wy, wx * wy]).astype(np.float32)
    return index, weight


def _sampling(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear sampling of warps ``params`` (see :func:`_coordinates`): flat indices and weights, each (4, K, P)."""
    return _bilinear(*_coordinates(params))


@functools.cache
def _grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The grid's warp parameters (K x 5) and their sampling (see :func:`_sampling`)."""
    params = [
        (angle, fx, fy, ox, oy)
        for angle in np.deg2rad(ANGLES)
        for fx in SCALES
        for fy in SCALES
        for ox in np.linspace(0, (1 - fx) * THUMB, OFFSETS)
        for oy in np.linspace(0, (1 - fy) * THUMB, OFFSETS)
    ]
    params = np.array(params)
    return (params, *_sampling(params))


def content_weights(thumbs: np.ndarray) -> np.ndarray:
    """Per-pixel weight (THUMB x THUMB, 0 to 1) of what differs between the images of a dataset.

    A frame, vignette, fan outline or burnt-in text sits at the same place in most images, so its
    pixels barely vary across the dataset; the weight is 0 where the interquartile range of a pixel
    over the images is below ``FLAT_SHARE`` of the typical range (its ``REF_QUANTILE`` over the
    pixels), rising to 1 at ``CONTENT_SHARE`` of it. With fewer than ``MIN_IMAGES`` images (no
    reliable estimate), or a dataset with no varying pixel, every pixel weighs 1.
    """
    thumbs = np.asarray(thumbs, dtype=np.float32).reshape(-1, THUMB, THUMB)
    if len(thumbs) < MIN_IMAGES:
        return np.ones((THUMB, THUMB), dtype=np.float32)
    sample = thumbs[np.linspace(0, len(thumbs) - 1, min(len(thumbs), STAT_IMAGES)).astype(int)]
    spread = np.subtract(*np.percentile(sample, [75, 25], axis=0))
    typical = np.percentile(spread, REF_QUANTILE)
    if typical <= 0:
        return np.ones((THUMB, THUMB), dtype=np.float32)
    ramp = (spread / typical - FLAT_SHARE) / (CONTENT_SHARE - FLAT_SHARE)
    return np.clip(ramp, 0, 1).astype(np.float32)


def _unit_rows(rows: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """Rows minus their (weighted) mean, times the root weight, divided by their norm: dot products are weighted NCCs.

    A flat row stays zero.
    """
    if weight is None:
        rows = rows - rows.mean(axis=-1, keepdims=True)
    else:
        rows = (rows - (rows @ weight)[..., None] / max(float(weight.sum()), 1e-6)) * np.sqrt(weight)
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-6)


def _inner(weights: np.ndarray | None) -> np.ndarray | None:
    """The inner pixels' weights (P) of a THUMB x THUMB weight map, or None."""
    return None if weights is None else np.asarray(weights, dtype=np.float32)[MARGIN:-MARGIN, MARGIN:-MARGIN].ravel()


def _warp(thumb: np.ndarray, index: np.ndarray, weight: np.ndarray, inner: np.ndarray | None = None) -> np.ndarray:
    """The warps of one thumbnail as unit rows (K x P), weighted by the inner pixels' ``inner`` weights."""
    return _unit_rows((thumb.ravel()[index] * weight).sum(axis=0), inner)


def _refine(thumb: np.ndarray, target: np.ndarray, start: np.ndarray, score: float, inner: np.ndarray | None) -> float:
    """Best NCC of warps of ``thumb`` with ``target`` (unit row) by pattern search from ``start``."""
    step = np.array(STEPS) * [np.pi / 180, 1, 1, 1, 1]
    moves = np.concatenate([np.eye(5), -np.eye(5)])
    for _ in range(ROUNDS):
        for _ in range(4):  # a few moves per step size: the grid start is within one spacing
            candidates = start + moves * step
            scores = _warp(thumb, *_sampling(candidates), inner) @ target
            if scores.max() <= score:
                break
            start, score = candidates[scores.argmax()], float(scores.max())
        step = step / 2
    return score


def coarse_rows(thumbs: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Each thumbnail's inner part, mean-pooled to COARSE x COARSE cells, as weighted unit rows (n x COARSE^2).

    Their dot products are a cheap, unwarped similarity: transformed copies stay well above
    ``COARSE_FLOOR`` (the pooling absorbs small shifts), so pairs below it need no warp search.
    """
    thumbs = np.asarray(thumbs, dtype=np.float32)
    side = (THUMB - 2 * MARGIN) // COARSE
    cut = MARGIN + (THUMB - 2 * MARGIN - side * COARSE) // 2

    def pool(a: np.ndarray) -> np.ndarray:
        a = a[..., cut : cut + side * COARSE, cut : cut + side * COARSE]
        return a.reshape(*a.shape[:-2], COARSE, side, COARSE, side).mean(axis=(-3, -1)).reshape(*a.shape[:-2], -1)

    return _unit_rows(pool(thumbs), None if weights is None else pool(np.asarray(weights, dtype=np.float32)))


def pair_similarity(
    thumbs: np.ndarray,
    pairs: Iterable[tuple[int, int]],
    *,
    weights: np.ndarray | None = None,
    refine_from: float = REFINE_FROM,
) -> np.ndarray:
    """Per pair of indices into ``thumbs`` (n x THUMB x THUMB): the best NCC over warps of either one.

    ``weights`` (THUMB x THUMB, e.g. :func:`content_weights`) weighs each pixel of the target
    thumbnail's grid; None weighs all alike. Pairs whose best grid warp scores below ``refine_from``
    keep that score (the local search adds at most about 0.05). Identical thumbnails (exact copies,
    flat images included) score 1.
    """
    thumbs = np.asarray(thumbs, dtype=np.float32)
    pairs = np.asarray(list(pairs), dtype=int).reshape(-1, 2)
    weight_in = _inner(weights)
    inner = _unit_rows(thumbs[:, MARGIN:-MARGIN, MARGIN:-MARGIN].reshape(len(thumbs), -1), weight_in)
    params, index, weight = _grid()
    best = np.full(len(pairs), -1.0)
    start = np.zeros((len(pairs), 3), dtype=int)  # warped image, target image, grid warp
    partners: dict[int, list[tuple[int, int]]] = {}
    for row, (a, b) in enumerate(pairs):
        partners.setdefault(int(a), []).append((row, int(b)))
        partners.setdefault(int(b), []).append((row, int(a)))
    for image, found in partners.items():
        rows, others = (np.array(c) for c in zip(*found))
        scores = _warp(thumbs[image], index, weight, weight_in) @ inner[others].T
        better = scores.max(axis=0) > best[rows]
        best[rows[better]] = scores.max(axis=0)[better]
        start[rows[better]] = np.stack([np.full(better.sum(), image), others[better], scores.argmax(axis=0)[better]], 1)
    for row in np.flatnonzero(best >= refine_from):
        image, other, k = start[row]
        best[row] = _refine(thumbs[image], inner[other], params[k], best[row], weight_in)
    if len(pairs):
        best[(thumbs[pairs[:, 0]] == thumbs[pairs[:, 1]]).all(axis=(1, 2))] = 1.0
    return best
