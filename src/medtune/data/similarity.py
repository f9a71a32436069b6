"""How alike two grey thumbnails are, allowing for a crop, a shift and a small rotation.

The similarity of two thumbnails is the weighted, zero-mean normalised cross-correlation (NCC) of
the inner pixels of one (the *target*) with the other (the *warped* image, taken as the original
the target was cut from) resampled under the best warp: a crop factor per axis, a position and an
angle. Each target pixel weighs what the dataset's content weights (:func:`content_weights`: 0 on
a frame every image shares) say at the place that pixel comes from in the warped image: the weights
move with the warp, so a crop whose frame sits a few pixels off still ignores its frame.

Two stages keep it cheap and precise: a fixed grid of warps, applied to every image at once as one
sparse matrix product, then a local search around the best grid warp of each pair (pairs that
score high enough to matter), vectorised over the pairs. :class:`ThumbSet` holds the per-image work
(standardised thumbnails, weighted moments per grid warp) so that any number of pair scores reuse
it. NCC ignores brightness and contrast; the margin ignores the corners that a rotation fills.
``medtune.data.duplicates`` uses it to confirm hash candidates.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable

import numpy as np

THUMB = 32  # thumbnail side: keeps hairs and speckle, 4 KB per image
MARGIN = 5  # thumbnail pixels per side left out of the correlation: rotated-in corners, crops
INNER = (THUMB - 2 * MARGIN) ** 2  # pixels per correlation
SCALES = (0.9, 0.95, 1.0)  # crop factors tried per axis: the copies keep >= 90% of each side
ANGLES = (-3.0, 0.0, 3.0)  # rotations tried, in degrees: copies are rotated up to 5
OFFSETS = 3  # crop positions tried per axis and scale: first, middle, last
# Local search: steps of (angle in degrees, scale x, scale y, offset x, offset y in pixels), halved
# each round; a step is half the grid's spacing, so the search reaches every warp between grid points.
STEPS = (1.5, 0.025, 0.025, 0.8, 0.8)
ROUNDS = 3
REFINE_FROM = 0.8  # pairs below this after the grid are far from any threshold worth using
# Content weights (see content_weights): a pixel whose spread over the dataset is under 10% of the
# typical spread is frame (weight 0), over 30% content (weight 1); the typical spread is the 90th
# percentile over pixels, so a frame covering most of the picture does not set it.
MIN_IMAGES = 20
STAT_IMAGES = 4096  # images sampled for the statistics: percentiles of 4 MB, any dataset size
REF_QUANTILE = 90
FLAT_SHARE = 0.1
CONTENT_SHARE = 0.3
# Cheap ranking rows (coarse_rows): 11 x 11 cells of 2 x 2 inner pixels; weights eroded by 2 pixels,
# so a frame that a crop moved by up to 3 px (10% of 32) weighs 0 there too. On the framed benchmark
# set this ranked 99% of planted copies among their original's 8 best (5 x 5 cells, not eroded: 15).
COARSE = 11
ERODE = 2
BLOCK = 16  # images warped per sparse product: 16 x 117,612 floats, 7.5 MB (a cheap transpose)
CHUNK = 1024  # warps per vectorised local-search step: 2 MB per sample array, near the cache


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
    inner = np.arange(MARGIN, THUMB - MARGIN, dtype=np.float32) + 0.5 - THUMB / 2
    u, v = (a.ravel()[None] for a in np.meshgrid(inner, inner))
    angle, fx, fy, ox, oy = (params[:, i : i + 1].astype(np.float32) for i in range(5))
    dx, dy = fx * u, fy * v
    x = ox + fx * THUMB / 2 + dx * np.cos(angle) - dy * np.sin(angle) - 0.5
    y = oy + fy * THUMB / 2 + dx * np.sin(angle) + dy * np.cos(angle) - 0.5
    return np.clip(x, 0, THUMB - 1.001), np.clip(y, 0, THUMB - 1.001)


def _bilinear(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear sampling at pixel coordinates ``x``, ``y`` (inside the thumbnail): flat indices and weights, each (4, ...)."""
    x0, y0 = x.astype(np.int32), y.astype(np.int32)
    wx, wy = x - x0, y - y0
    index = np.stack([y0 * THUMB + x0, y0 * THUMB + x0 + 1, (y0 + 1) * THUMB + x0, (y0 + 1) * THUMB + x0 + 1])
    weight = np.stack([(1 - wx) * (1 - wy), wx * (1 - wy), (1 - wx) * wy, wx * wy]).astype(np.float32)
    return index, weight


def _sampling(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear sampling of warps ``params`` (see :func:`_coordinates`): flat indices and weights, each (4, K, P)."""
    return _bilinear(*_coordinates(params))


@functools.cache
def _grid() -> tuple[np.ndarray, object]:
    """The grid's warp parameters (K x 5) and its sampling as a sparse matrix (K * INNER x THUMB^2).

    Row ``k * INNER + p`` of the matrix holds the bilinear weights with which warp ``k`` samples
    inner pixel ``p``: one sparse product warps many images under every grid warp at once.
    """
    from scipy.sparse import csr_matrix

    params = [
        (angle, fx, fy, ox, oy)
        for angle in np.deg2rad(ANGLES)
        for fx in SCALES
        for fy in SCALES
        for ox in np.linspace(0, (1 - fx) * THUMB, OFFSETS)
        for oy in np.linspace(0, (1 - fy) * THUMB, OFFSETS)
    ]
    params = np.array(params)
    index, weight = _sampling(params)
    rows = np.broadcast_to(np.arange(index[0].size).reshape(index[0].shape), index.shape)
    matrix = csr_matrix((weight.ravel(), (rows.ravel(), index.ravel())), shape=(index[0].size, THUMB * THUMB))
    return params, matrix


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


def _eroded(weights: np.ndarray, radius: int) -> np.ndarray:
    """The minimum of ``weights`` over each pixel's square of side ``2 * radius + 1``."""
    from numpy.lib.stride_tricks import sliding_window_view

    padded = np.pad(weights, radius, mode="edge")
    return sliding_window_view(padded, (2 * radius + 1,) * 2).min(axis=(-2, -1))


def coarse_rows(thumbs: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Each thumbnail's inner part, mean-pooled to COARSE x COARSE cells, as weighted unit rows (n x COARSE^2).

    Their dot products are a cheap, unwarped similarity that ranks an image's transformed copies
    among its best matches (the pooling absorbs small shifts, the eroded weights a displaced frame),
    so only the best few of an image's hash candidates need the warp search.
    """
    thumbs = np.asarray(thumbs, dtype=np.float32)
    side = (THUMB - 2 * MARGIN) // COARSE
    cut = MARGIN + (THUMB - 2 * MARGIN - side * COARSE) // 2

    def pool(a: np.ndarray) -> np.ndarray:
        a = a[..., cut : cut + side * COARSE, cut : cut + side * COARSE]
        return a.reshape(*a.shape[:-2], COARSE, side, COARSE, side).mean(axis=(-3, -1)).reshape(*a.shape[:-2], -1)

    if weights is None:
        return _unit_rows(pool(thumbs))
    return _unit_rows(pool(thumbs), pool(_eroded(np.asarray(weights, dtype=np.float32), ERODE)))


def one_blas_thread() -> contextlib.AbstractContextManager:
    """BLAS held to one thread while it lasts: the products here are small and many.

    On 2 cores at load 8, OpenBLAS's two threads made a 243 x 484 x 19 product 8x slower than one
    (4.5 ms against 0.58 ms): they wait for each other. threadpoolctl comes with scikit-learn
    (through grad-cam); without it nothing changes.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - installed with the pinned stack
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _ncc(
    sxy: np.ndarray, sx: np.ndarray, sxx: np.ndarray, sy: np.ndarray, syy: np.ndarray, sv: np.ndarray
) -> np.ndarray:
    """Weighted NCC from weighted sums (of x*y, x, x*x, y, y*y and the weights, broadcast together); flat sides give 0."""
    sv = np.maximum(sv, 1e-6)
    cov = sxy - sx * sy / sv
    var = np.maximum(sxx - sx * sx / sv, 0) * np.maximum(syy - sy * sy / sv, 0)
    return np.where(var > 1e-9, cov / np.sqrt(np.maximum(var, 1e-9)), 0.0)


def _lerp(values: np.ndarray, corner: np.ndarray, wx: np.ndarray, wy: np.ndarray) -> np.ndarray:
    """Bilinear samples of flat ``values`` at the pixels ``corner`` (top left) plus fractions ``wx``, ``wy``."""
    top, bottom = values[corner], values[corner + THUMB]
    top = top + wx * (values[corner + 1] - top)
    return top + wy * (bottom + wx * (values[corner + THUMB + 1] - bottom) - top)


class ThumbSet:
    """A dataset's thumbnails prepared once for pair scores (:meth:`similarity`).

    Each thumbnail is standardised (zero mean, unit spread: the NCC does not change, float32 sums
    stay exact enough); the weighted sums of every target's inner pixels under every grid warp's
    weights are kept (K x n), so a pair costs one K x INNER x 1 product per direction.
    """

    def __init__(self, thumbs: np.ndarray, weights: np.ndarray | None = None) -> None:
        self.raw = np.asarray(thumbs, dtype=np.float32).reshape(-1, THUMB * THUMB)
        spread = self.raw.std(axis=1, keepdims=True)
        self.flat = ((self.raw - self.raw.mean(axis=1, keepdims=True)) / np.maximum(spread, 1e-6)).astype(np.float32)
        self.weights = (
            np.ones(THUMB * THUMB, np.float32) if weights is None else np.asarray(weights, np.float32).ravel()
        )
        inner = np.arange(THUMB * THUMB).reshape(THUMB, THUMB)[MARGIN:-MARGIN, MARGIN:-MARGIN].ravel()
        self.targets = np.ascontiguousarray(self.flat[:, inner])
        self.params, self.grid = _grid()
        # weight of target pixel p under grid warp k: the content weight where p comes from in the warped image
        self.view = (self.grid @ self.weights).reshape(len(self.params), INNER).astype(np.float32)
        self.sum_v = self.view.sum(axis=1)[:, None]
        self.sum_vy = self.view @ self.targets.T
        self.sum_vyy = self.view @ (self.targets**2).T

    def similarity(self, pairs: Iterable[tuple[int, int]], refine_from: float = REFINE_FROM) -> np.ndarray:
        """Per index pair: the best weighted NCC over warps of either image onto the other.

        Pairs whose best grid warp scores below ``refine_from`` keep that score (the local search
        adds at most about 0.06). Identical thumbnails (exact copies, flat images) score 1.
        """
        pairs = np.asarray(list(pairs), dtype=int).reshape(-1, 2)
        best, warped, target, start = self._grid_scores(pairs)
        rows = np.flatnonzero(best >= refine_from)
        best[rows] = self._refine(warped[rows], target[rows], start[rows], best[rows])
        best[(self.raw[pairs[:, 0]] == self.raw[pairs[:, 1]]).all(axis=1)] = 1.0
        return best

    def _grid_scores(self, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Best grid score per pair, with its warped image, target image and warp parameters."""
        m = len(pairs)
        warped = np.concatenate([pairs[:, 0], pairs[:, 1]])
        target = np.concatenate([pairs[:, 1], pairs[:, 0]])
        order = np.argsort(warped, kind="stable")
        images, first = np.unique(warped[order], return_index=True)
        bounds = np.append(first, len(order))
        score, warp = np.full(2 * m, -1.0), np.zeros(2 * m, dtype=int)
        for b in range(0, len(images), BLOCK):
            block = images[b : b + BLOCK]
            moved = np.ascontiguousarray((self.grid @ self.flat[block].T).T).reshape(len(block), -1, INNER)
            weighted = self.view * moved
            sum_x, sum_xx = weighted.sum(axis=2), (weighted * moved).sum(axis=2)
            for j in range(len(block)):
                rows = order[bounds[b + j] : bounds[b + j + 1]]
                ncc = _ncc(
                    weighted[j] @ self.targets[target[rows]].T,
                    sum_x[j][:, None],
                    sum_xx[j][:, None],
                    self.sum_vy[:, target[rows]],
                    self.sum_vyy[:, target[rows]],
                    self.sum_v,
                )
                score[rows], warp[rows] = ncc.max(axis=0), ncc.argmax(axis=0)
        side = np.where(score[:m] >= score[m:], 0, m) + np.arange(m)  # the better direction per pair
        return score[side], warped[side], target[side], self.params[warp[side]]

    def _scores(self, warped: np.ndarray, target: np.ndarray, params: np.ndarray) -> np.ndarray:
        """Weighted NCC of image ``warped[r]`` under warp ``params[r]`` with target ``target[r]``, per row."""
        out = np.empty(len(params))
        for c in range(0, len(params), CHUNK):
            x, y = _coordinates(params[c : c + CHUNK])
            x0, y0 = x.astype(np.int32), y.astype(np.int32)
            corner = y0 * THUMB + x0  # the top left of the four pixels each sample reads
            wx, wy = x - x0, y - y0
            x = _lerp(self.flat.ravel(), warped[c : c + CHUNK, None] * THUMB * THUMB + corner, wx, wy)
            v = _lerp(self.weights, corner, wx, wy)
            y = self.targets[target[c : c + CHUNK]]
            vx = v * x
            sums = (vx * y, vx, vx * x, v * y, v * y * y, v)
            out[c : c + CHUNK] = _ncc(*(s.sum(axis=1) for s in sums))
        return out

    def _refine(self, warped: np.ndarray, target: np.ndarray, start: np.ndarray, score: np.ndarray) -> np.ndarray:
        """Best scores by a pattern search from the ``start`` warps, all pairs moving together."""
        step = np.array(STEPS) * [np.pi / 180, 1, 1, 1, 1]
        moves = np.concatenate([np.eye(5), -np.eye(5)])
        start, score = start.copy(), score.copy()
        for _ in range(ROUNDS):
            active = np.arange(len(score))
            for _ in range(4):  # a few moves per step size: the grid start is within one spacing
                if not len(active):
                    break
                candidates = start[active, None] + moves * step  # (active, 10, 5)
                found = self._scores(
                    np.repeat(warped[active], len(moves)),
                    np.repeat(target[active], len(moves)),
                    candidates.reshape(-1, 5),
                ).reshape(len(active), len(moves))
                better = np.flatnonzero(found.max(axis=1) > score[active])
                active = active[better]
                start[active] = candidates[better, found[better].argmax(axis=1)]
                score[active] = found[better].max(axis=1)
            step = step / 2
        return score


def pair_similarity(
    thumbs: np.ndarray,
    pairs: Iterable[tuple[int, int]],
    *,
    weights: np.ndarray | None = None,
    refine_from: float = REFINE_FROM,
) -> np.ndarray:
    """Per pair of indices into ``thumbs`` (n x THUMB x THUMB): the best NCC over warps of either one.

    ``weights`` (THUMB x THUMB, e.g. :func:`content_weights`) weighs each pixel where it lies in the
    warped image; None weighs all alike. See :meth:`ThumbSet.similarity`; a caller that scores
    pairs of one dataset several times keeps a :class:`ThumbSet` instead.
    """
    with one_blas_thread():
        return ThumbSet(thumbs, weights).similarity(pairs, refine_from)
