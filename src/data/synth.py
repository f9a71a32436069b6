"""Embedded synthetic dermoscopy-like dataset: ``python -m src.data synth --out DIR``.

Every image holds one lesion (an irregular polygon, stored as its COCO segmentation) of one of three
classes, told apart by colour mix, border irregularity and internal texture drawn from overlapping
per-class distributions, plus a spurious coloured corner marker that agrees with the class in the
train split only. Each image is drawn from a numpy Generator seeded by ``(seed, image_id)`` and the
split plan from one seeded by ``seed``, so the same arguments give byte-identical files.

``multilabel=True`` (``synth --multilabel``) adds two artefact findings, each a COCO annotation of
its own category with an empty segmentation (so lesion masks are unchanged): a ``ruler`` strip along
one edge and an ``ink_mark`` arc around the lesion, in exactly ``FINDING_SHARE`` of each split's
images, drawn independently of the class. An image's label set is then its lesion class plus its
findings. They are drawn from generators seeded by ``(seed, 1)`` (which images) and
``(seed, image_id, 1)`` (where), so the lesions, hairs and markers are those of the single-label set.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

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
    """Draw the spurious square marker in a corner the lesion does not touch (the least touched if none)."""
    size = inside.shape[0]
    side, gap = max(2, round(size * rng.uniform(0.05, 0.08))), max(1, round(size / 32))
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
    box = [max(0.0, xs.min() - gap), max(0.0, ys.min() - gap), min(size - 1.0, xs.max() + gap), min(size - 1.0, ys.max() + gap)]
    start = rng.uniform(0, 360)
    colour = tuple(int(c) for c in np.clip(INK_RGB + rng.integers(-15, 16, 3), 0, 255))
    draw.arc(box, start, start + rng.uniform(240, 360), fill=colour, width=max(2, round(size / 20)))
    return [round(float(box[0]), 2), round(float(box[1]), 2), round(float(box[2] - box[0]), 2), round(float(box[3] - box[1]), 2)]


FINDING_DRAW = (_draw_ruler, _draw_ink)  # parallel to FINDINGS


def render(
    rng: np.random.Generator, size: int, label: int, marker: int, *, findings: tuple[int, ...] = (),
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


def assign_splits(
    n: int, *, seed: int = 0, train_share: float = 0.6, val_share: float = 0.2, cue_agreement: float = 0.9
) -> dict[str, list[tuple[int, int]]]:
    """Plan (class index, marker class index) for every image of each split.

    Classes are balanced (``n // 3`` each, the remainder to the first classes) and split per class.
    In train exactly ``round(cue_agreement * n_train)`` markers agree with the class and the others
    name another class at random; in val and test the marker is the class shifted by a random offset,
    balanced so that a third of the markers agree and each class gets each marker colour about equally.
    """
    rng = np.random.default_rng(seed)
    labels: dict[str, list[int]] = {split: [] for split in SPLITS}
    for label in range(len(CLASSES)):
        count = n // len(CLASSES) + int(label < n % len(CLASSES))
        n_train = int(count * train_share + 0.5)
        n_val = min(int(count * val_share + 0.5), count - n_train)
        for split, k in zip(SPLITS, (n_train, n_val, count - n_train - n_val)):
            labels[split] += [label] * k
    plan = {}
    for split in SPLITS:
        y = rng.permutation(np.array(labels[split], dtype=np.int64))
        if split == "train":  # exactly round(cue_agreement * n) offsets are 0, the others 1 or 2 at random
            agree = rng.permutation(len(y)) < round(cue_agreement * len(y))
            offset = np.where(agree, 0, rng.integers(1, len(CLASSES), len(y)))
        else:  # offsets 0, 1, 2 equally often, shuffled: the marker carries no information on the class
            offset = rng.permutation(np.arange(len(y)) % len(CLASSES))
        markers = (y + offset) % len(CLASSES)
        plan[split] = list(zip(y.tolist(), markers.tolist()))
    return plan


def assign_findings(plan: dict[str, list[tuple[int, int]]], *, seed: int = 0) -> dict[str, list[tuple[int, ...]]]:
    """The findings (indices into ``FINDINGS``) of every image of each split.

    Finding ``f`` is shown by exactly ``round(FINDING_SHARE[f] * n)`` images of a split of ``n``,
    clamped to [1, n - 1] so that every split of two or more images has both positives and negatives.
    """
    rng = np.random.default_rng([seed, 1])
    out = {}
    for split in SPLITS:
        n = len(plan[split])
        chosen = [set(rng.permutation(n)[: min(max(round(s * n), 1), n - 1)].tolist()) for s in FINDING_SHARE]
        out[split] = [tuple(f for f in range(len(FINDINGS)) if i in chosen[f]) for i in range(n)]
    return out


def _finding_annotation(ann_id: int, image_id: int, finding: int, bbox: list[float]) -> dict:
    """COCO annotation of an artefact finding: its own category, no segmentation (the mask stays the lesion's)."""
    return {"id": ann_id, "image_id": image_id, "category_id": len(CLASSES) + finding + 1, "segmentation": [],
            "area": 0, "bbox": bbox, "iscrowd": 0}


def _annotation(image_id: int, label: int, poly: np.ndarray) -> dict:
    """COCO annotation of one lesion polygon; area by the shoelace formula, bbox [x, y, w, h]."""
    low, high = poly.min(0), poly.max(0)
    bbox = [float(low[0]), float(low[1]), float(high[0] - low[0]), float(high[1] - low[1])]
    return {
        "id": image_id, "image_id": image_id, "category_id": label + 1, "segmentation": [poly.ravel().tolist()],
        "area": round(_shoelace(poly), 2), "bbox": [round(v, 2) for v in bbox], "iscrowd": 0,
    }


def _write_split(
    folder: Path, split: str, items: list[tuple[int, int]], first_id: int, size: int, info: dict,
    findings: list[tuple[int, ...]] | None = None,
) -> None:
    """Render the images of one split into ``folder/images`` and write ``folder/<split>.json``.

    Finding annotations get ids ``image_id + (f + 1) * n``, unique across the three files.
    """
    coco: dict = {"info": {**info, "split": split}, "images": [], "annotations": []}
    for i, (image_id, (label, marker)) in enumerate(enumerate(items, start=first_id)):
        shown = findings[i] if findings else ()
        image, poly, boxes = render(np.random.default_rng([info["seed"], image_id]), size, label, marker,
                                    findings=shown, finding_rng=np.random.default_rng([info["seed"], image_id, 1]))
        file_name = f"{split}_{image_id:05d}.png"
        image.save(folder / "images" / file_name, format="PNG")
        coco["images"].append(
            {"id": image_id, "file_name": file_name, "width": size, "height": size, "marker_class": marker + 1}
        )
        coco["annotations"].append(_annotation(image_id, label, poly))
        for f, box in zip(shown, boxes):
            coco["annotations"].append(_finding_annotation(image_id + (f + 1) * info["n"], image_id, f, box))
    coco["categories"] = [{"id": i + 1, "name": name, "supercategory": "lesion"} for i, name in enumerate(CLASSES)]
    if findings is not None:
        first = len(CLASSES) + 1
        coco["categories"] += [{"id": first + i, "name": name, "supercategory": "artefact"} for i, name in enumerate(FINDINGS)]
    (folder / f"{split}.json").write_text(json.dumps(coco) + "\n")


def _readme(info: dict, counts: dict[str, dict[str, int]], agreement: dict[str, float]) -> str:
    """README.md text: how the folder was made, what the classes and the spurious cue are, the layout."""
    traits = "\n".join(f"| {k} | " + " | ".join(f"{m:.2f} ± {s:.2f}" for m, s in v) + " |" for k, v in TRAITS.items())
    splits = "\n".join(f"- `{s}.json`: {', '.join(f'{k} {v}' for k, v in c.items())}" for s, c in counts.items())
    agree = ", ".join(f"{s} {a:.2f}" for s, a in agreement.items())
    return f"""# Synthetic dermoscopy-like lesions

Made by `python -m src.data synth` (`src/data/synth.py`) with seed {info['seed']}, {info['n']} images
of {info['size']} x {info['size']} px; the same arguments reproduce these files byte for byte.

## Classes
One lesion per image: an irregular polygon (the COCO `segmentation`) on textured skin with 1-4
hairs, covering about {AREA_SHARE[0]:.0%}-{AREA_SHARE[1]:.0%} of the image. The classes (category ids 1-3:
{', '.join(CLASSES)}) differ only by the lesion; each trait is drawn per image from a normal
(mean ± sd below, clipped to [0, 1]) that overlaps between classes, so no trait alone decides.

| trait | {' | '.join(CLASSES)} |
|---|---|---|---|
{traits}

irregularity/asymmetry: border harmonics; dark_share: black or blue-grey blotches; blue: blue-grey
share of them; blotch: internal texture and dark dots; darkness: brown shade.

## Spurious cue
A small square marker in a corner, red/green/blue for {'/'.join(CLASSES)}; the image entry's
`marker_class` is the category it names. In train it names the class for {info['cue_agreement']:.0%} of
images (the others name another class); in val and test it is independent of the class (a balanced
random shift, so a third agree). Share of images whose marker names their class: {agree}.
A model that reads the marker scores well in train and near chance in val/test.

## Layout
- `images/<split>_<image id>.png`; `file_name` in the JSON is relative to `images/`.
{splits}
- Image (and annotation) ids are unique across the three files.
"""


def _readme_findings(found: dict[str, dict[str, int]]) -> str:
    """README.md section of a multi-label set: the artefact findings and their counts per split."""
    splits = "\n".join(f"- `{s}.json`: {', '.join(f'{k} {v}' for k, v in c.items())}" for s, c in found.items())
    return f"""
## Multi-label findings
Made with `--multilabel`. Two artefacts are extra categories, annotated with an empty
`segmentation` (masks stay the lesion's): `ruler` (id {len(CLASSES) + 1}, a light strip with dark ticks
along one edge, {FINDING_SHARE[0]:.0%} of each split) and `ink_mark` (id {len(CLASSES) + 2}, a violet arc
around the lesion, {FINDING_SHARE[1]:.0%}). They are independent of the class; an image's label set is
its lesion class plus its findings.
{splits}
"""


def _check_args(n: int, size: int, train_share: float, val_share: float, cue_agreement: float) -> None:
    """Raise ValueError naming the first argument out of range."""
    for ok, message in [
        (n >= len(CLASSES), f"n must be at least {len(CLASSES)}, got {n}"),
        (size >= 16, f"size must be at least 16 px, got {size}"),
        (0 < train_share and 0 <= val_share and train_share + val_share <= 1,
         f"need 0 < train_share, 0 <= val_share, train_share + val_share <= 1; got {train_share}, {val_share}"),
        (0 <= cue_agreement <= 1, f"cue_agreement must be in [0, 1], got {cue_agreement}"),
    ]:
        if not ok:
            raise ValueError(message)


def _move_into(staging: Path, out: Path) -> None:
    """Move the staged files into ``out``, first removing what an earlier run wrote (``GENERATED``)."""
    if not out.exists():
        staging.rename(out)
        return
    for name in GENERATED:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    for item in staging.iterdir():
        item.rename(out / item.name)


def generate(
    out: Path, *, n: int = 300, size: int = 64, seed: int = 0, train_share: float = 0.6, val_share: float = 0.2,
    cue_agreement: float = 0.9, multilabel: bool = False, force: bool = False,
) -> dict:
    """Write the synthetic dataset to ``out`` (see the module docstring and the README it writes).

    Files are built in a hidden sibling folder and moved in at the end, so a failure leaves ``out``
    untouched.

    Args:
        out: destination folder; it must be missing or empty unless ``force``.
        n: number of images over all splits.
        size: image side in pixels.
        seed: seed of every random draw.
        train_share: share of each class in train.
        val_share: share of each class in val; test gets the rest.
        cue_agreement: share of train images whose marker names their class.
        multilabel: add the artefact findings ``FINDINGS`` as extra categories (see the module docstring).
        force: in a non-empty ``out``, replace what an earlier run wrote (``GENERATED``), keep the rest.

    Returns:
        ``{"path": str, "counts": {split: {class: count}}, "marker_agreement": {split: share}}``, plus
        ``"findings": {split: {finding: count}}`` when ``multilabel``.

    Raises:
        FileExistsError: ``out`` is a file, or is not empty and ``force`` is false.
        ValueError: an argument is out of range.
    """
    _check_args(n, size, train_share, val_share, cue_agreement)
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a folder")
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists and is not empty; pass --force to overwrite it")
    plan = assign_splits(n, seed=seed, train_share=train_share, val_share=val_share, cue_agreement=cue_agreement)
    info = {
        "description": "medtune synthetic dermoscopy-like lesions (src.data.synth)", "seed": seed, "size": size,
        "n": n, "cue_agreement": cue_agreement, "train_share": train_share, "val_share": val_share,
    }
    if multilabel:
        info["multilabel"] = True  # only then: the single-label files stay byte-identical
    findings = assign_findings(plan, seed=seed) if multilabel else None
    found = {s: {name: sum(f in fs for fs in findings[s]) for f, name in enumerate(FINDINGS)} for s in SPLITS} if findings else None
    counts = {s: {c: sum(label == i for label, _ in plan[s]) for i, c in enumerate(CLASSES)} for s in SPLITS}
    agreement = {s: float(np.mean([y == m for y, m in plan[s]])) if plan[s] else float("nan") for s in SPLITS}
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (staging / "images").mkdir()
        first_id = 1
        for split in SPLITS:
            _write_split(staging, split, plan[split], first_id, size, info, findings[split] if findings else None)
            first_id += len(plan[split])
        (staging / "README.md").write_text(_readme(info, counts, agreement) + (_readme_findings(found) if found else ""))
        _move_into(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary = {"path": str(out), "counts": counts, "marker_agreement": agreement}
    return {**summary, "findings": found} if found else summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m src.data synth``."""
    parser.add_argument("--out", type=Path, required=True, help="destination folder (must be empty or missing)")
    parser.add_argument("--n", type=int, default=300, help="number of images over all splits (default 300)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--cue-agreement", type=float, default=0.9, help="train share whose marker names the class")
    parser.add_argument("--multilabel", action="store_true", help="add the ruler and ink_mark artefact findings")
    parser.add_argument("--defects", action="store_true", help="then inject known defects (src.data.defects)")
    parser.add_argument("--force", action="store_true", help="overwrite the generated files in a non-empty --out")


def run(args: argparse.Namespace) -> int:
    """Generate the dataset (then inject defects if asked); prints a one-line summary."""
    try:
        summary = generate(
            args.out, n=args.n, size=args.size, seed=args.seed, cue_agreement=args.cue_agreement,
            multilabel=args.multilabel, force=args.force,
        )
    except (FileExistsError, ValueError) as err:
        print(f"synth: {err}", file=sys.stderr)
        return 1
    if args.defects:
        from src.data.defects import inject_defects

        inject_defects(Path(summary["path"]), seed=args.seed)
    counts = ", ".join(f"{s} {sum(c.values())}" for s, c in summary["counts"].items())
    print(f"synth: wrote {summary['path']} ({counts}; {args.size} px, seed {args.seed})")
    return 0
