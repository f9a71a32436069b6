"""Drawing of the synthetic dermoscopy-like images (see ``medtune.data.tools.synth`` for the dataset).

Class traits, the lesion polygon, skin texture, hairs, the spurious marker and the optional
artefact findings; ``render`` draws one image from a seeded numpy Generator.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES: tuple[str, ...] = ("nevus", "atypical", "melanoma")  # category ids 1, 2, 3
SPLITS: tuple[str, ...] = ("train", "val", "test")
MARKER_RGB = np.array([[215, 45, 45], [45, 165, 70], [50, 85, 215]])  # red, green, blue marker per class
# Per-class (mean, sd) of each lesion trait, clipped to [0, 1]. The distributions overlap on purpose,
# so that a classifier looking at the lesion does well above chance but is not perfect.
TRAITS: dict[str, tuple[tuple[float, float], ...]] = {
    "irregularity": ((0.03, 0.02), (0.07, 0.03), (0.11, 0.04)),  # amplitude of border harmonics 4-16
    "asymmetry": ((0.05, 0.04), (0.10, 0.05), (0.15, 0.06)),  # amplitude of border harmonics 2-3
    "dark_share": ((0.04, 0.05), (0.18, 0.10), (0.35, 0.12)),  # lesion share in black/blue-grey blotches
    "blue": ((0.10, 0.10), (0.30, 0.15), (0.55, 0.20)),  # blue-grey (vs black) share of those blotches
    "blotch": ((0.15, 0.10), (0.35, 0.15), (0.55, 0.18)),  # internal texture contrast and dot count
    "darkness": ((0.35, 0.20), (0.50, 0.20), (0.60, 0.20)),  # brown base shade, light (0) to dark (1)
}
SKIN_LIGHT, SKIN_DARK = np.array([238.0, 204.0, 182.0]), np.array([198.0, 148.0, 120.0])
BROWN_LIGHT, BROWN_DARK = np.array([178.0, 118.0, 82.0]), np.array([98.0, 60.0, 42.0])
BLACK, BLUE_GREY = np.array([46.0, 34.0, 32.0]), np.array([104.0, 110.0, 128.0])
AREA_SHARE = (0.08, 0.35)  # lesion area as a share of the image area, drawn uniformly
# What a run writes in --out (defects/ comes from --defects); --force replaces these and nothing else.
# Multi-label artefact findings (category ids 4, 5) and the share of each split's images showing them:
# a common and a rare label, so samplers and weights for rare labels have something to fix.
FINDINGS: tuple[str, ...] = ("ruler", "ink_mark")
FINDING_SHARE = (0.3, 0.15)
RULER_RGB, INK_RGB = np.array([232.0, 232.0, 226.0]), np.array([120.0, 50.0, 150.0])  # white plastic, gentian violet
GENERATED = ("images", "train.json", "val.json", "test.json", "README.md", "defects")


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [0, 1]: a ``cells`` x ``cells`` grid upsampled bicubically."""
    grid = rng.random((cells, cells), dtype=np.float32)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC))


def _soft_step(x: np.ndarray) -> np.ndarray:
    """Logistic function written with tanh, which never overflows."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _shoelace(poly: np.ndarray) -> float:
    """Area of a simple polygon given as an (N, 2) array of vertices."""
    x, y = poly[:, 0], poly[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)))


def _sample_traits(rng: np.random.Generator, label: int) -> dict[str, float]:
    """One draw of every trait in ``TRAITS`` for class index ``label``."""
    return {name: float(np.clip(rng.normal(*dist[label]), 0.0, 1.0)) for name, dist in TRAITS.items()}


def _lesion_polygon(rng: np.random.Generator, size: int, traits: dict[str, float]) -> np.ndarray:
    """Lesion border as 64 (x, y) pixel vertices, inside the image with a 1 px margin.

    The radius as a function of angle is 1 plus harmonics 2-3 (asymmetry) and 4-16 (border
    irregularity) with random phases; the shape is then scaled to a random share of the image area.
    """
    theta = np.linspace(0.0, 2.0 * np.pi, 64, endpoint=False)
    h = np.arange(2, 17)[:, None]  # harmonics 2-3 make the outline asymmetric, 4-16 the border irregular
    asym = traits["asymmetry"] * rng.uniform(0.5, 1.0, h.shape)
    irreg = traits["irregularity"] * rng.uniform(0.2, 1.0, h.shape) * 4 / h  # 1 / h: wavy rather than spiky
    phase = rng.uniform(0.0, 2.0 * np.pi, h.shape)
    radius = 1.0 + (np.where(h <= 3, asym, irreg) * np.cos(h * theta + phase)).sum(0)
    xy = np.stack([np.cos(theta), np.sin(theta)], axis=1) * np.clip(radius, 0.35, None)[:, None]
    scale = np.sqrt(rng.uniform(*AREA_SHARE) * size**2 / _shoelace(xy))
    xy *= min(scale, 0.9 * size / float((xy.max(0) - xy.min(0)).max()))  # keep the extent <= 90% of the side
    low, high = 1.0 - xy.min(0), size - 1.0 - xy.max(0)  # range of centres keeping the bbox inside
    return xy + low + (high - low) * rng.uniform(0.2, 0.8, 2)


def _skin(rng: np.random.Generator, size: int) -> np.ndarray:
    """Skin-toned background (size, size, 3) with low-frequency mottling and a slight vignette."""
    tone = SKIN_LIGHT + (SKIN_DARK - SKIN_LIGHT) * rng.uniform(0.0, 1.0)
    light = 1.0 + 0.12 * (_smooth_noise(rng, size, 4) - 0.5)
    redness = 1.0 + 0.08 * (_smooth_noise(rng, size, 6) - 0.5)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) * 2.0 - 1.0
    vignette = 1.0 - rng.uniform(0.08, 0.2) * (xx**2 + yy**2) / 2.0
    rgb = tone * (light * vignette)[..., None]
    rgb[..., 0] *= redness
    return rgb


def _dots(rng: np.random.Generator, size: int, inside: np.ndarray, blotch: float) -> np.ndarray:
    """Multiplicative darkening (size, size) from a few small dark dots (globules) in the lesion."""
    ys, xs = np.nonzero(inside)
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    count = int(rng.poisson(blotch * 14)) if len(xs) else 0  # about 2 dots for a nevus, 8 for a melanoma
    for i, r in zip(rng.integers(0, max(len(xs), 1), count), size / 64 * rng.uniform(0.6, 1.4, count)):
        draw.ellipse([xs[i] - r, ys[i] - r, xs[i] + r, ys[i] + r], fill=255)
    return 1.0 - 0.55 * np.asarray(layer, dtype=np.float32) / 255.0


def _lesion_rgb(rng: np.random.Generator, size: int, inside: np.ndarray, traits: dict[str, float]) -> np.ndarray:
    """Lesion colour field (size, size, 3): brown base, texture, black/blue-grey blotches, dots."""
    ys, xs = np.nonzero(inside)
    yy, xx = np.mgrid[0:size, 0:size]
    dist = np.hypot(xx - xs.mean(), yy - ys.mean()) / np.sqrt(len(xs) / np.pi)  # 1 at the mean radius
    shade = 1.0 + 0.15 * (np.clip(dist, 0.0, 1.2) - 0.6)  # darker centre, lighter rim
    shade += traits["blotch"] * 0.7 * (_smooth_noise(rng, size, 8) - 0.5)
    rgb = (BROWN_LIGHT + (BROWN_DARK - BROWN_LIGHT) * traits["darkness"]) * shade[..., None]
    field = _smooth_noise(rng, size, 5)
    threshold = np.quantile(field[inside], 1.0 - traits["dark_share"])  # dark_share of the lesion passes
    dark = _soft_step((field - threshold) / 0.04)[..., None]
    blue = _soft_step((_smooth_noise(rng, size, 4) - (1.0 - traits["blue"])) / 0.04)[..., None]
    rgb = rgb * (1.0 - dark) + (BLACK * (1.0 - blue) + BLUE_GREY * blue) * dark
    return rgb * _dots(rng, size, inside, traits["blotch"])[..., None]


def _draw_hairs(rng: np.random.Generator, draw: ImageDraw.ImageDraw, size: int) -> None:
    """Draw 1-4 dark thin hairs as quadratic Bezier curves (1 px wide at 64 px)."""
    t = np.linspace(0.0, 1.0, 24)[:, None]
    for _ in range(int(rng.integers(1, 5))):
        start, angle, length = rng.uniform(-0.1, 1.1, 2) * size, rng.uniform(0, np.pi), rng.uniform(0.5, 1.2) * size
        direction = np.array([np.cos(angle), np.sin(angle)])
        end = start + length * direction * rng.choice([-1.0, 1.0])
        bend = (start + end) / 2 + rng.uniform(-0.25, 0.25) * length * np.array([-direction[1], direction[0]])
        curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * bend + t**2 * end
        colour = tuple(int(c) for c in rng.uniform(25, 70) * np.array([1.0, 0.8, 0.7]))
        draw.line([tuple(p) for p in curve], fill=colour, width=max(1, round(size / 64)), joint="curve")


def _draw_marker(rng: np.random.Generator, draw: ImageDraw.ImageDraw, inside: np.ndarray, marker: int) -> None:
    """Draw the spurious square marker in a corner the lesion does not touch (the least touched if none).

    Large and saturated (16-22% of the side, like a sticker, ruler or ink mark in real images): the
    shortcuts that hurt in practice are easy to learn, and a few-pixel marker was not learned by a
    whole-image model at the shipped budget.
    """
    size = inside.shape[0]
    side, gap = max(3, round(size * rng.uniform(0.16, 0.22))), max(1, round(size / 32))
    corners = [(gap, gap), (size - gap - side, gap), (gap, size - gap - side), (size - gap - side,) * 2]
    overlap = [int(inside[y : y + side, x : x + side].sum()) for x, y in corners]
    free = [c for c, o in zip(corners, overlap) if o == 0] or [corners[int(np.argmin(overlap))]]
    x, y = free[int(rng.integers(len(free)))]
    colour = np.clip(MARKER_RGB[marker] + rng.integers(-15, 16, 3), 0, 255)
    draw.rectangle([x, y, x + side - 1, y + side - 1], fill=tuple(int(c) for c in colour))


def _draw_ruler(rng: np.random.Generator, draw: ImageDraw.ImageDraw, inside: np.ndarray) -> list[float]:
    """Draw a light ruler strip with dark ticks along a random edge; returns its bbox [x, y, w, h]."""
    size = inside.shape[0]
    width, step = max(3, round(size * 0.1)), max(3, round(size / 12))  # 3 px strip, tick every 3 px at 32 px
    edge = int(rng.integers(4))  # top, bottom, left, right
    low = 0 if edge in (0, 2) else size - width
    box = [0, low, size - 1, low + width - 1] if edge < 2 else [low, 0, low + width - 1, size - 1]
    draw.rectangle(box, fill=tuple(int(c) for c in RULER_RGB - rng.uniform(0, 20)))
    tick = width // 2 + 1
    for t in range(int(rng.integers(step)), size, step):
        inner = low + width - tick if edge in (1, 3) else low
        line = [t, inner, t, inner + tick - 1] if edge < 2 else [inner, t, inner + tick - 1, t]
        draw.line(line, fill=(40, 40, 40))
    return [float(box[0]), float(box[1]), float(box[2] - box[0] + 1), float(box[3] - box[1] + 1)]


def _draw_ink(rng: np.random.Generator, draw: ImageDraw.ImageDraw, inside: np.ndarray) -> list[float]:
    """Draw a violet ink arc (240-360 degrees) around the lesion; returns its bbox [x, y, w, h]."""
    size = inside.shape[0]
    ys, xs = np.nonzero(inside)
    gap = rng.uniform(1.0, 3.0) * size / 32
    box = [
        max(0.0, xs.min() - gap),
        max(0.0, ys.min() - gap),
        min(size - 1.0, xs.max() + gap),
        min(size - 1.0, ys.max() + gap),
    ]
    start = rng.uniform(0, 360)
    colour = tuple(int(c) for c in np.clip(INK_RGB + rng.integers(-15, 16, 3), 0, 255))
    draw.arc(box, start, start + rng.uniform(240, 360), fill=colour, width=max(2, round(size / 20)))
    return [
        round(float(box[0]), 2),
        round(float(box[1]), 2),
        round(float(box[2] - box[0]), 2),
        round(float(box[3] - box[1]), 2),
    ]


FINDING_DRAW = (_draw_ruler, _draw_ink)  # parallel to FINDINGS


def render(
    rng: np.random.Generator,
    size: int,
    label: int,
    marker: int,
    *,
    findings: tuple[int, ...] = (),
    finding_rng: np.random.Generator | None = None,
) -> tuple[Image.Image, np.ndarray, list[list[float]]]:
    """One RGB image with a lesion of class index ``label`` and a marker of class index ``marker``.

    ``findings`` (indices into ``FINDINGS``) are drawn with ``finding_rng`` before the hairs and the
    marker; ``rng`` makes the same draws with or without them.

    Returns:
        The image, the lesion polygon as an (N, 2) array of (x, y) pixel coordinates, and one
        bbox [x, y, w, h] per finding.
    """
    traits = _sample_traits(rng, label)
    poly = np.round(_lesion_polygon(rng, size, traits), 2)
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).polygon([tuple(p) for p in poly - 0.5], fill=255)  # COCO x=0.5 is PIL pixel 0
    inside = np.asarray(mask) > 0
    alpha = np.asarray(mask.filter(ImageFilter.GaussianBlur(size / 96)), dtype=np.float32)[..., None] / 255.0
    rgb = _skin(rng, size) * (1.0 - alpha) + _lesion_rgb(rng, size, inside, traits) * alpha
    rgb += rng.normal(0.0, 3.0, (size, size, 1)) + rng.normal(0.0, 1.5, (size, size, 3))  # fine noise
    image = Image.fromarray(np.clip(np.round(rgb), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    boxes = [FINDING_DRAW[f](finding_rng, draw, inside) for f in findings]
    _draw_hairs(rng, draw, size)
    _draw_marker(rng, draw, inside, marker)
    return image, poly, boxes
