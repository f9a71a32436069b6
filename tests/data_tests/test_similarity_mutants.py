"""``medtune.data.similarity`` against independent references: scipy's interpolation and filters, and
the weighted correlation written out, so that a wrong sign, neighbour, weight, bound or loop in the
module changes a number these tests check (mutation testing: ``benchmarks/mutation.sh``)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import map_coordinates, minimum_filter

from medtune.data import similarity
from medtune.data.similarity import MARGIN, THUMB

RNG = np.random.default_rng(7)


def smooth_thumbs(n: int, seed: int = 0) -> np.ndarray:
    """``n`` grey thumbnails with detail at a few pixels' scale (8 x 8 noise, bicubic to THUMB)."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
    return np.stack([np.asarray(Image.fromarray(c).resize((THUMB, THUMB), Image.BICUBIC), np.float32) for c in cells])


def grid_params() -> np.ndarray:
    """The documented grid, built here: 3 angles x 3 x 3 crop factors x 3 x 3 crop positions (radians)."""
    rows = []
    for angle in (-3.0, 0.0, 3.0):
        for fx in (0.9, 0.95, 1.0):
            for fy in (0.9, 0.95, 1.0):
                for ox in np.linspace(0, (1 - fx) * THUMB, 3):
                    for oy in np.linspace(0, (1 - fy) * THUMB, 3):
                        rows.append((np.deg2rad(angle), fx, fy, ox, oy))
    return np.array(rows)


def warp_coordinates(angle: object, fx: object, fy: object, ox: object, oy: object) -> tuple[np.ndarray, np.ndarray]:
    """Where the target's inner pixel centres lie in the original: the crop ``(ox, oy)`` of ``fx``, ``fy`` of
    each side, rotated by ``angle`` about the crop's centre; pixel ``i`` covers ``i - 0.5 .. i + 0.5``.

    Scalars give flat arrays (one warp); arrays of K warps give K x P.
    """
    angle, fx, fy, ox, oy = (np.asarray(a, np.float64)[..., None] for a in (angle, fx, fy, ox, oy))
    centre = np.arange(MARGIN, THUMB - MARGIN) + 0.5 - THUMB / 2
    u, v = (a.ravel() for a in np.meshgrid(centre, centre))
    u, v = u * fx, v * fy
    x = ox + fx * THUMB / 2 + u * np.cos(angle) - v * np.sin(angle) - 0.5
    y = oy + fy * THUMB / 2 + u * np.sin(angle) + v * np.cos(angle) - 0.5
    return np.clip(x, 0, THUMB - 1.001), np.clip(y, 0, THUMB - 1.001)


def weighted_ncc(x: np.ndarray, y: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Weighted normalised cross-correlation (float64) along the last axis, 0 where a side is flat."""
    x, y, v = np.broadcast_arrays(*(np.asarray(a, np.float64) for a in (x, y, v)))
    mx = (v * x).sum(-1, keepdims=True) / v.sum(-1, keepdims=True)
    my = (v * y).sum(-1, keepdims=True) / v.sum(-1, keepdims=True)
    cov = (v * (x - mx) * (y - my)).sum(-1)
    var = (v * (x - mx) ** 2).sum(-1) * (v * (y - my) ** 2).sum(-1)
    return np.where(var > 1e-9, cov / np.sqrt(np.maximum(var, 1e-9)), 0.0)


def reference_scores(warped: np.ndarray, target: np.ndarray, weights: np.ndarray, params: np.ndarray) -> np.ndarray:
    """NCC of ``warped`` resampled (scipy, order 1) under each warp of ``params`` (K x 5) with ``target``'s
    inner pixels."""
    x, y = warp_coordinates(*np.asarray(params, np.float64).reshape(-1, 5).T)
    moved = map_coordinates(np.asarray(warped, np.float64), [y.ravel(), x.ravel()], order=1).reshape(x.shape)
    v = map_coordinates(np.asarray(weights, np.float64), [y.ravel(), x.ravel()], order=1).reshape(x.shape)
    inner = np.asarray(target, np.float64)[MARGIN:-MARGIN, MARGIN:-MARGIN].ravel()
    return weighted_ncc(moved, inner, v)


def reference_score(warped: np.ndarray, target: np.ndarray, weights: np.ndarray, params: np.ndarray) -> float:
    """:func:`reference_scores` of one warp."""
    return float(reference_scores(warped, target, weights, params)[0])


def reference_grid(a: np.ndarray, b: np.ndarray, weights: np.ndarray) -> float:
    """The best grid score of a pair, either image warped onto the other."""
    return max(reference_scores(w, t, weights, grid_params()).max() for w, t in ((a, b), (b, a)))


def random_weights(seed: int = 1) -> np.ndarray:
    """Content weights with a zero frame, ones inside and a ramp between (like a vignette's)."""
    y, x = np.mgrid[:THUMB, :THUMB] + 0.5 - THUMB / 2
    radius = np.hypot(x, y)
    weights = np.clip((14 - radius) / 4, 0, 1)
    return (weights * np.random.default_rng(seed).uniform(0.5, 1.0, weights.shape)).astype(np.float32)


def test_grid_warps_are_the_documented_grid() -> None:
    params, matrix = similarity._grid()
    # 243 warps in the documented order; each sparse row is one bilinear sample: weights sum to 1
    assert np.allclose(params, grid_params())
    assert matrix.shape == (len(params) * similarity.INNER, THUMB * THUMB)
    assert np.allclose(np.asarray(matrix.sum(axis=1)).ravel(), 1.0, atol=1e-5)
    image = smooth_thumbs(1)[0]
    moved = (matrix @ image.ravel()).reshape(len(params), -1)
    for k in (0, 40, 121, 200, 242):
        x, y = warp_coordinates(*params[k])
        # each grid warp samples the image where the warp says, as scipy's bilinear interpolation does
        assert np.allclose(moved[k], map_coordinates(image, [y, x], order=1), atol=1e-3), k


def test_thumbnail_is_the_box_filtered_grey_image() -> None:
    rgb = np.random.default_rng(4).integers(0, 256, (2 * THUMB, 2 * THUMB, 3), dtype=np.uint8)
    thumb = similarity.thumbnail(Image.fromarray(rgb))
    grey = np.asarray(Image.fromarray(rgb).convert("L"), np.float64)
    # each pixel the mean of its 2 x 2 block of the grey image (box filter), as float32: 4 KB per image
    assert thumb.dtype == np.float32 and thumb.shape == (THUMB, THUMB)
    assert np.abs(thumb - grey.reshape(THUMB, 2, THUMB, 2).mean(axis=(1, 3))).max() <= 1.0  # 8-bit rounding


def test_coordinates_follow_rotation_scale_and_crop() -> None:
    params = np.array([[np.deg2rad(4.0), 0.91, 0.97, 1.3, 0.4], [np.deg2rad(-2.0), 1.0, 0.9, 0.0, 2.9]])
    x, y = similarity._coordinates(params)
    assert x.dtype == y.dtype == np.float32  # CHUNK warps' samples: 2 MB per array
    for k in range(2):
        ex, ey = warp_coordinates(*params[k])
        # the warp rotates counter-clockwise in (x, y), scales each axis about the crop's centre, then shifts
        assert np.allclose(x[k], ex, atol=1e-4) and np.allclose(y[k], ey, atol=1e-4)
    # a shift pushing samples past the border is clipped inside: every sample reads a real pixel
    x, y = similarity._coordinates(np.array([[0.0, 1.0, 1.0, 20.0, -20.0], [0.0, 1.0, 1.0, -20.0, 20.0]]))
    assert x[0].max() == pytest.approx(THUMB - 1.001) and y[0].min() == 0.0 and x[0].min() > 1
    assert x[1].min() == 0.0 and y[1].max() == pytest.approx(THUMB - 1.001) and y[1].min() > 1


def test_bilinear_neighbours_and_weights() -> None:
    x, y = np.array([[2.25, 7.0]]), np.array([[3.5, 0.75]])
    index, weight = similarity._bilinear(x.astype(np.float32), y.astype(np.float32))
    assert weight.dtype == np.float32  # the grid's sparse matrix: 243 x 484 x 4 of them
    # top left, top right, bottom left, bottom right, each with its share of the area
    assert index[:, 0, 0].tolist() == [3 * THUMB + 2, 3 * THUMB + 3, 4 * THUMB + 2, 4 * THUMB + 3]
    assert np.allclose(weight[:, 0, 0], [0.75 * 0.5, 0.25 * 0.5, 0.75 * 0.5, 0.25 * 0.5])
    assert index[:, 0, 1].tolist() == [7, 8, THUMB + 7, THUMB + 8]
    assert np.allclose(weight[:, 0, 1], [0.25, 0.0, 0.75, 0.0])
    image = RNG.uniform(0, 1, (THUMB, THUMB)).astype(np.float32)
    # _lerp (the local search's sampler) reads the same four pixels with the same weights
    corner = np.array([3 * THUMB + 2, 7])
    lerped = similarity._lerp(image.ravel(), corner, np.array([0.25, 0.0]), np.array([0.5, 0.75]))
    assert np.allclose(lerped, (image.ravel()[index[:, 0]] * weight[:, 0]).sum(axis=0))


@pytest.mark.parametrize("n", [19, 20, 45])
def test_content_weights_are_the_documented_ramp(n: int) -> None:
    thumbs = smooth_thumbs(n, seed=n)
    thumbs[:, :6] = 12.0 + np.random.default_rng(n).normal(0, 0.5, (n, 6, THUMB))  # a frame: barely varies
    weights = similarity.content_weights(thumbs)
    if n < similarity.MIN_IMAGES:
        # too few images for a reliable spread: every pixel counts
        assert weights.dtype == np.float32 and np.array_equal(weights, np.ones((THUMB, THUMB)))
        return
    spread = np.percentile(thumbs, 75, axis=0) - np.percentile(thumbs, 25, axis=0)
    typical = np.percentile(spread, 90)
    expected = np.clip((spread / typical - 0.1) / (0.3 - 0.1), 0, 1)
    # 0 under 10% of the typical spread (the frame), 1 over 30%, linear between
    assert weights.dtype == np.float32 and np.allclose(weights, expected, atol=1e-5)
    assert (weights[:6] == 0).all() and (weights[10:] > 0).mean() > 0.9
    # only ratios of spreads count: thumbnails scaled to 0-1 weigh the same
    assert np.allclose(similarity.content_weights(thumbs / 255), expected, atol=1e-5)


def test_flat_sets_weigh_one() -> None:
    thumbs = np.full((30, THUMB, THUMB), 7.0, np.float32)
    # no pixel varies: no frame can be told from content, so all weigh 1
    flat = similarity.content_weights(thumbs)
    assert flat.dtype == np.float32 and np.array_equal(flat, np.ones((THUMB, THUMB)))


def test_unit_rows_give_weighted_correlations() -> None:
    rows = RNG.normal(size=(3, 50)).astype(np.float32) * [[1.0], [5.0], [0.2]] + [[3.0], [-1.0], [0.0]]
    weight = RNG.uniform(0, 1, 50).astype(np.float32)
    unit = similarity._unit_rows(rows, weight)
    for i, j in ((0, 1), (1, 2), (0, 0)):
        # dot products of the unit rows are the weighted NCCs of the rows
        assert unit[i] @ unit[j] == pytest.approx(weighted_ncc(rows[i], rows[j], weight), abs=1e-5)
    small = similarity._unit_rows(rows, weight / 100)  # weights summing to under 1: the same correlations
    assert small[0] @ small[1] == pytest.approx(unit[0] @ unit[1], abs=1e-5)
    tiny = similarity._unit_rows(rows[:2] / 1000)  # norms under 1 are normalised too
    assert np.allclose(np.linalg.norm(tiny, axis=1), 1, atol=1e-5)
    plain = similarity._unit_rows(rows)
    assert plain[0] @ plain[1] == pytest.approx(np.corrcoef(rows[0], rows[1])[0, 1], abs=1e-5)
    # a flat row stays zero instead of dividing by zero
    assert np.array_equal(similarity._unit_rows(np.full((1, 50), 4.0, np.float32)), np.zeros((1, 50)))
    tiny = similarity._unit_rows(np.full((1, 4), 2.0, np.float32), np.zeros(4, np.float32))
    assert np.isfinite(tiny).all() and not tiny.any()


def test_erosion_and_coarse_rows_match_their_definitions() -> None:
    weights = RNG.uniform(0, 1, (THUMB, THUMB)).astype(np.float32)
    # the minimum over each pixel's (2r+1)^2 square, the border repeated
    assert np.array_equal(similarity._eroded(weights, 2), minimum_filter(weights, size=5, mode="nearest"))
    assert np.array_equal(similarity._eroded(weights, 1), minimum_filter(weights, size=3, mode="nearest"))
    thumbs = smooth_thumbs(3)
    side = (THUMB - 2 * MARGIN) // similarity.COARSE  # 2 x 2 pixels per cell, the 22 inner pixels
    inner = slice(MARGIN, MARGIN + side * similarity.COARSE)

    def pooled(a: np.ndarray) -> np.ndarray:
        a = a[..., inner, inner]
        return a.reshape(*a.shape[:-2], 11, 2, 11, 2).mean(axis=(-3, -1)).reshape(*a.shape[:-2], 121)

    rows = similarity.coarse_rows(thumbs)
    assert rows.shape == (3, 121)
    assert rows[0] @ rows[1] == pytest.approx(np.corrcoef(pooled(thumbs[0]), pooled(thumbs[1]))[0, 1], abs=1e-5)
    rows = similarity.coarse_rows(thumbs, weights)
    expected = weighted_ncc(pooled(thumbs[0]), pooled(thumbs[2]), pooled(minimum_filter(weights, 5, mode="nearest")))
    assert rows[0] @ rows[2] == pytest.approx(expected, abs=1e-5)


def test_one_blas_thread_limits_blas_while_it_lasts() -> None:
    from threadpoolctl import threadpool_info

    before = {i["filepath"]: i["num_threads"] for i in threadpool_info()}
    with similarity.one_blas_thread():
        inside = threadpool_info()
        assert all(i["num_threads"] == 1 for i in inside if i["user_api"] == "blas")
        # only BLAS: other thread pools (OpenMP) keep their size
        assert all(i["num_threads"] == before[i["filepath"]] for i in inside if i["user_api"] != "blas")
    assert {i["filepath"]: i["num_threads"] for i in threadpool_info()} == before


def test_one_blas_thread_without_threadpoolctl_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib
    import sys

    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import raises ImportError
    held = similarity.one_blas_thread()
    assert isinstance(held, contextlib.nullcontext)
    with held:
        assert similarity.pair_similarity(smooth_thumbs(2), [(0, 0)])[0] == 1.0


def test_ncc_from_sums() -> None:
    x, y, v = RNG.normal(size=40), RNG.normal(size=40), RNG.uniform(0, 1, 40)
    sums = ((v * x * y).sum(), (v * x).sum(), (v * x * x).sum(), (v * y).sum(), (v * y * y).sum(), v.sum())
    assert similarity._ncc(*(np.array(s) for s in sums)) == pytest.approx(weighted_ncc(x, y, v), abs=1e-9)
    # NCC ignores the scale of values and weights: small variances and weight sums (< 1) give the same
    for scale, weight in ((0.01, 1.0), (1.0, 0.01)):
        xs, ys, vs = x * scale, y * scale, v * weight
        sums = (
            (vs * xs * ys).sum(),
            (vs * xs).sum(),
            (vs * xs * xs).sum(),
            (vs * ys).sum(),
            (vs * ys * ys).sum(),
            vs.sum(),
        )
        assert similarity._ncc(*(np.array(s) for s in sums)) == pytest.approx(weighted_ncc(x, y, v), abs=1e-6)
    # a product of variances of exactly 1e-9 counts as flat
    assert similarity._ncc(*(np.array(s) for s in (1e-9, 0.0, 1e-9, 0.0, 1.0, 1.0))) == 0.0
    # a flat side: 0, not a division by zero
    flat = np.ones(40)
    sums = ((v * flat * y).sum(), (v * flat).sum(), (v * flat).sum(), (v * y).sum(), (v * y * y).sum(), v.sum())
    assert similarity._ncc(*(np.array(s) for s in sums)) == 0.0


@pytest.mark.parametrize("weighted", [False, True])
def test_grid_scores_equal_the_reference(weighted: bool) -> None:
    thumbs = smooth_thumbs(20, seed=5)
    thumbs[3] = 0.8 * thumbs[2][::-1].T + 9  # a pair whose best grid score is high, but not exact
    weights = random_weights() if weighted else None
    pairs = [(0, 1), (2, 3), (3, 2), (4, 19), (7, 7)] + [(i, 23 - i) for i in range(5, 12)]  # 18 images
    found = similarity.pair_similarity(thumbs, pairs, weights=weights, refine_from=2.0)
    assert found.dtype == np.float64
    full = np.ones((THUMB, THUMB)) if weights is None else weights
    expected = [1.0 if i == j else reference_grid(thumbs[i], thumbs[j], full) for i, j in pairs]
    # the best of 2 x 243 grid warps, either image onto the other, over more pairs than one BLOCK of images
    assert np.allclose(found, expected, atol=2e-4), np.c_[found, expected]


def test_scores_equal_the_reference_at_any_warp() -> None:
    thumbs = smooth_thumbs(4, seed=9)
    weights = random_weights(2)
    prepared = similarity.ThumbSet(thumbs, weights)
    rng = np.random.default_rng(3)
    n = 2 * similarity.CHUNK + 37  # three chunks
    params = np.c_[rng.uniform(-0.08, 0.08, n), rng.uniform(0.88, 1.0, (n, 2)), rng.uniform(0, 3.5, (n, 2))]
    warped, target = rng.integers(0, 4, n), rng.integers(0, 4, n)
    found = prepared._scores(warped, target, params)
    for r in (0, 1, 500, similarity.CHUNK - 1, similarity.CHUNK, 2 * similarity.CHUNK + 1, n - 1):
        expected = reference_score(thumbs[warped[r]], thumbs[target[r]], weights, params[r])
        assert found[r] == pytest.approx(expected, abs=2e-4), r


def sampled_copy(original: np.ndarray, params: tuple[float, ...]) -> np.ndarray:
    """The thumbnail a crop/rotation ``params`` of ``original`` gives, sampled the way the module models it."""
    x, y = warp_coordinates(*params)
    out = np.zeros((THUMB, THUMB), np.float32)
    out[MARGIN:-MARGIN, MARGIN:-MARGIN] = map_coordinates(original.astype(np.float64), [y, x], order=1).reshape(22, 22)
    return out


def reference_search(a: np.ndarray, b: np.ndarray) -> float:
    """The documented local search, written out: from the best grid warp (better direction), up to 4 moves
    of +-one step per parameter, the best move each time; steps (1.5 degrees, 0.025, 0.025, 0.8, 0.8 px)
    halved over 3 rounds."""
    ones = np.ones((THUMB, THUMB))
    grid = grid_params()
    both = [reference_scores(w, t, ones, grid) for w, t in ((a, b), (b, a))]
    direction = 0 if both[0].max() >= both[1].max() else 1
    w, t = ((a, b), (b, a))[direction]
    score, warp = both[direction].max(), grid[both[direction].argmax()]
    step = np.array([np.deg2rad(1.5), 0.025, 0.025, 0.8, 0.8])
    for _ in range(3):
        for _ in range(4):
            moves = warp + np.concatenate([np.eye(5), -np.eye(5)]) * step
            scores = reference_scores(w, t, ones, moves)
            if scores.max() <= score:
                break
            score, warp = scores.max(), moves[scores.argmax()]
        step = step / 2
    return score


def test_local_search_is_the_documented_pattern_search() -> None:
    original = smooth_thumbs(1, seed=11)[0]
    # off-grid warps: between grid angles, crop factors and positions, some needing negative moves
    warps = [
        (np.deg2rad(1.4), 0.93, 0.97, 1.0, 0.4),
        (np.deg2rad(-1.6), 0.97, 0.92, 0.3, 1.9),
        (np.deg2rad(-0.7), 0.91, 0.94, 2.3, 0.5),
    ]
    thumbs = np.stack([original] + [sampled_copy(original, w) for w in warps])
    thumbs[1:, :MARGIN] = thumbs[1:, -MARGIN:] = 0  # the copies' margins are blank: outside the correlation
    pairs = [(0, k) for k in range(1, len(thumbs))]
    found = similarity.pair_similarity(thumbs, pairs, refine_from=0.0)
    grid = similarity.pair_similarity(thumbs, pairs, refine_from=2.0)
    expected = [reference_search(thumbs[0], thumbs[k]) for _, k in pairs]
    # the search reaches what the written-out search reaches (to 1e-8 here; a step 0.5% off: 3e-6),
    # well above the grid's best
    assert np.allclose(found, expected, rtol=0, atol=5e-7), np.array(found) - expected
    assert (found > grid + 0.003).all() and (found > 0.99).all(), (found, grid)


def test_refinement_starts_at_the_threshold() -> None:
    original = smooth_thumbs(1, seed=11)[0]
    thumbs = np.stack([original, sampled_copy(original, (np.deg2rad(1.4), 0.93, 0.97, 1.0, 0.4))])
    grid = similarity.pair_similarity(thumbs, [(0, 1)], refine_from=2.0)[0]
    # refined only from refine_from up: at the grid score itself it is refined, just above it is not
    assert similarity.pair_similarity(thumbs, [(0, 1)], refine_from=float(grid))[0] > grid + 0.003
    assert similarity.pair_similarity(thumbs, [(0, 1)], refine_from=float(grid) + 1e-4)[0] == grid


def test_exact_copies_score_one_and_standardisation_is_harmless() -> None:
    thumbs = smooth_thumbs(3, seed=4)
    faint = thumbs[2:3] / 1000  # spread under 1: standardised all the same
    thumbs = np.concatenate([thumbs[:2], faint, thumbs[:1], 3.0 * thumbs[1:2] + 40.0, np.full((1, THUMB, THUMB), 9.0)])
    prepared = similarity.ThumbSet(thumbs)
    assert prepared.raw.dtype == prepared.flat.dtype == prepared.view.dtype == prepared.weights.dtype == np.float32
    assert similarity.ThumbSet(thumbs, np.ones((THUMB, THUMB))).weights.dtype == np.float32
    # no pairs: no scores (not an error)
    assert prepared.similarity([]).shape == (0,)
    # standardised rows: zero mean, unit spread, so float32 sums stay exact
    assert np.allclose(prepared.flat.mean(axis=1), 0, atol=1e-5)
    assert np.allclose(prepared.flat[:5].std(axis=1), 1, atol=1e-4)
    assert not prepared.flat[5].any()  # a flat image stays flat
    scores = prepared.similarity([(0, 3), (1, 4), (5, 5), (0, 1)], refine_from=2.0)
    # an identical thumbnail scores exactly 1; a contrast and brightness change (almost) 1; others less
    assert scores[0] == 1.0 and scores[1] >= 0.9999 and scores[2] == 1.0 and scores[3] < 0.9
