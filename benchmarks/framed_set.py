"""A framed synthetic set: distinct lesions seen through one dermoscope's dark circular frame.

Every image is a lesion of the synthetic renderer (``medtune.data.tools.synth_render.render``: a centred
lesion of one of three classes on skin, hairs, a marker), so any two are look-alikes by
construction, drawn inside the same acquisition frame: black outside a circle of radius 0.40 of the
side (jittered by +-1% of the side per image, as a dermoscope moves on the skin), a soft edge, and a
burnt-in white label in the lower left corner, identical in every image. The frame is what the
images share; ``benchmarks/near_duplicates.py`` plants transformed copies among them and checks
that the detector groups copies, not frames.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from medtune.data.tools.synth_render import render

RADIUS = 0.40  # frame radius over image side: the frame covers about half of the picture
JITTER = 0.01  # per-image jitter of the circle's centre and radius, over the side
LABEL = "x20 DERMLITE"  # the burnt-in text every image carries


def frame_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """Per-pixel share of the picture that shows through the frame (1 inside the circle, 0 outside)."""
    cx, cy = size / 2 + rng.uniform(-JITTER, JITTER, 2) * size
    radius = (RADIUS + rng.uniform(-JITTER, JITTER)) * size
    y, x = np.mgrid[:size, :size] + 0.5
    inside = Image.fromarray((((x - cx) ** 2 + (y - cy) ** 2 <= radius**2) * 255).astype(np.uint8))
    return np.asarray(inside.filter(ImageFilter.GaussianBlur(size / 128)), dtype=np.float32) / 255.0


def framed_image(seed: int, size: int) -> Image.Image:
    """The lesion image of ``seed`` inside the frame, as RGB."""
    rng = np.random.default_rng(seed)
    image, _, _ = render(rng, size, label=seed % 3, marker=int(rng.integers(3)))
    inside = frame_mask(size, rng)[..., None]
    dark = 12.0 + rng.normal(0.0, 2.0, (size, size, 1))  # the frame is not quite black, with sensor noise
    rgb = np.asarray(image, dtype=np.float32) * inside + dark * (1.0 - inside)
    out = Image.fromarray(np.clip(np.round(rgb), 0, 255).astype(np.uint8))
    ImageDraw.Draw(out).text((2, size - 12), LABEL, fill=(255, 255, 255))
    return out


def framed_set(n: int, size: int = 128, seed: int = 0) -> list[Image.Image]:
    """``n`` framed images of distinct lesions (seeds ``seed * 1_000_003 + i``)."""
    return [framed_image(seed * 1_000_003 + i, size) for i in range(n)]
