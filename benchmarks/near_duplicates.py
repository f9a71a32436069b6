"""Near-duplicate detector: recall of planted copies and false pairs among distinct images.

Every distinct image gets one planted copy with all of these at random strength: rescale 0.8-1.25,
crop up to 10% of each side length, brightness and contrast up to +-15%, rotation up to 5 degrees,
Gaussian noise (sigma up to 8 grey levels), saved as JPEG quality 60. The detector
(``medtune.data.duplicates``) then groups originals and copies together, as ``check`` does.

- recall: planted (original, copy) pairs that end in one group;
- false pairs: pairs of images of *different* originals that end in one group (after union-find,
  what ``split`` acts on), over all such pairs; the pairwise rate (distance alone) is printed too.

Images: BUSI (``../shared/datasets/busi/images``) when present: ultrasound images look alike, the
hard case for false pairs. BUSI has its own near duplicates (frames of one lesion); images joined at
``KNOWN_BITS`` (visually checked: same scene) count as one original, so they are not "distinct".
Pairs of BUSI images above it that look like the same lesion still count as false: the false rate
is an upper bound. Without BUSI, the embedded synthetic generator. ``--quick``: 300 images.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PROJECT_DIR, WORK, load  # noqa: E402

from medtune.data import duplicates  # noqa: E402

BUSI = PROJECT_DIR.parent / "shared" / "datasets" / "busi" / "images"
KNOWN_BITS = 13  # BUSI pairs this close are one scene (histogram gap at 14-16 bits)
TARGET = (0.95, 0.01)  # recall at least, false-pair rate at most


def plant(image: Image.Image, rng: random.Random) -> Image.Image:
    """A transformed copy of ``image`` (see the module docstring for the transforms)."""
    scale = rng.uniform(0.8, 1.25)
    img = image.convert("L").resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    cut_w, cut_h = rng.uniform(0, 0.1) * img.width, rng.uniform(0, 0.1) * img.height
    left, top = rng.uniform(0, cut_w), rng.uniform(0, cut_h)
    img = img.crop((round(left), round(top), round(img.width - cut_w + left), round(img.height - cut_h + top)))
    img = img.rotate(rng.uniform(-5, 5), resample=Image.BILINEAR)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.85, 1.15))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.85, 1.15))
    noise = np.random.default_rng(rng.randrange(2**31)).normal(0, rng.uniform(0, 8), (img.height, img.width))
    img = Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=60)
    return Image.open(io.BytesIO(buffer.getvalue()))


def source_images(n: int) -> tuple[str, list[Path]]:
    """(name, image files): up to ``n`` BUSI images when present, else ``n`` synthetic ones."""
    if BUSI.is_dir():
        files = sorted(BUSI.glob("*.png"))
        return "BUSI", sorted(random.Random(0).sample(files, min(n, len(files))))
    from medtune.data.synth import generate

    out = WORK / f"synth-dup-n{n}"
    if not (out / "train.json").is_file():
        generate(out, n=n, size=128, seed=0)
    return "synthetic", sorted((out / "images").glob("*.png"))[:n]


def distance_matrix(hashes: np.ndarray) -> np.ndarray:
    """All pairwise Hamming distances of the rows of ``hashes`` (bytes)."""
    return np.stack([np.bitwise_count(hashes ^ row).sum(axis=1) for row in hashes])


def same_group(distances: np.ndarray, threshold: int) -> np.ndarray:
    """Component label per image after union-find over pairs within ``threshold``."""
    pairs = [tuple(p) for p in np.argwhere(np.triu(distances <= threshold, 1))]
    label = np.arange(len(distances))
    for group in duplicates.union_groups(list(range(len(distances))), pairs):
        label[group] = group[0]
    return label


def measure(distances: np.ndarray, origin: np.ndarray, n: int, threshold: int) -> tuple[float, float, float]:
    """(recall, false-pair rate after grouping, pairwise false rate); images n.. are copies of 0..n-1."""
    label = same_group(distances, threshold)
    recall = float(np.mean(label[:n] == label[n:]))
    upper = np.triu(np.ones(distances.shape, dtype=bool), 1)
    distinct = upper & (origin[:, None] != origin[None, :])
    grouped = float((label[:, None] == label[None, :])[distinct].mean())
    return recall, grouped, float((distances <= threshold)[distinct].mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 images instead of 780")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.time()
    name, files = source_images(300 if args.quick else 780)
    rng = random.Random(args.seed)
    originals = [Image.open(f) for f in files]
    hashes = np.stack(
        [duplicates.image_hash(im) for im in originals] + [duplicates.image_hash(plant(im, rng)) for im in originals]
    )
    n = len(files)
    distances = distance_matrix(hashes)
    known = same_group(distances[:n, :n], KNOWN_BITS) if name == "BUSI" else np.arange(n)
    origin = np.concatenate([known, known])
    print(
        f"{name}: {n} images ({len(set(known))} after joining known duplicates at <= {KNOWN_BITS} bits) + {n} planted copies; "
        f"hashing {time.time() - started:.1f}s, {load()}"
    )
    print(f"{'bits':>5}{'recall':>9}{'false pairs (grouped)':>23}{'false pairs (pairwise)':>24}")
    for threshold in range(20, 41, 2):
        recall, grouped, pairwise = measure(distances, origin, n, threshold)
        mark = "  <- default" if threshold == duplicates.DEFAULT_THRESHOLD else ""
        print(f"{threshold:>5}{recall:>9.3f}{grouped:>23.4%}{pairwise:>24.4%}{mark}")
    recall, grouped, _ = measure(distances, origin, n, duplicates.DEFAULT_THRESHOLD)
    ok = recall >= TARGET[0] and grouped <= TARGET[1]
    print(
        f"default {duplicates.DEFAULT_THRESHOLD} bits: recall {recall:.3f}, false pairs {grouped:.4%} "
        f"(target recall >= {TARGET[0]} at <= {TARGET[1]:.0%}): {'met' if ok else 'NOT met'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
