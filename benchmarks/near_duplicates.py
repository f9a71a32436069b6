"""Near-duplicate detector: recall of planted copies, false pairs and false groups among distinct images.

Every distinct image gets one planted copy with all of these at random strength: rescale 0.8-1.25,
crop up to 10% of each side length, brightness and contrast up to +-15%, rotation up to 5 degrees,
Gaussian noise (sigma up to 8 grey levels), saved as JPEG quality 60. The detector
(``medtune.data.duplicates``: hash candidates, confirmed by thumbnail correlation) then groups
originals and copies together, as ``check`` does.

- recall: planted (original, copy) pairs that end in one group;
- false pairs: pairs of images of *different* originals that end in one group (trusted or
  suspicious: what ``split`` would act on if accepted), over all such pairs;
- false groups: groups holding images of more than one original; the largest one's size (in images).
Targets: recall >= 0.95, false pairs <= 0.5%, no false group of more than 2 images. Time per 1,000
images counts fingerprinting and grouping (``check``'s work), not decoding; the grouping's CPU time
is printed too (on a loaded machine the wall time says more about the neighbours than the code).

Three image sets at the defaults: the embedded synthetic dermoscopy-like set (every image a centred
lesion on skin, the hard case for look-alikes), the framed set (``framed_set.py``: the same kind of
lesions, all inside one dermoscope's dark circular frame with burnt-in text, what chained 92
distinct lesions into one group before the frame-aware, coherent grouping) and BUSI
(``../shared/datasets/busi/images``, when present; ultrasound with its fan and text). BUSI has its
own near duplicates (frames of one lesion): images joined at ``KNOWN_BITS`` (visually checked: same
scene) and the groups in ``busi_same_scene.json`` (each checked by eye: one scene) count as one
original, so they are not "distinct". ``--montages DIR`` writes, for every false group, a PNG of its
originals side by side, so that a new false group can be checked by eye before anyone calls it a
duplicate (and added to that file) or a detector error.
``--quick``: 300 images per set instead of 780; ``--grid``: also the pairwise grid of hash
thresholds and similarities (slow on the framed set); ``--framed-only N``: only the framed set, N
images (the timing for large sets).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PROJECT_DIR, WORK, load  # noqa: E402

from medtune.data import duplicates  # noqa: E402
from medtune.data.similarity import coarse_rows, content_weights, pair_similarity  # noqa: E402

BUSI = PROJECT_DIR.parent / "shared" / "datasets" / "busi" / "images"
SAME_SCENE = Path(__file__).resolve().parent / "busi_same_scene.json"  # BUSI groups checked by eye: one scene
KNOWN_BITS = 13  # BUSI pairs this close are one scene (histogram gap at 14-16 bits)
TARGET = (0.95, 0.005, 2)  # recall at least, false-pair rate at most, largest false group at most
THRESHOLDS = (28, 32, 36, 40)  # hash bits in the grid
SIMILARITIES = (None, 0.92, 0.94, 0.95, 0.96)  # None: the hash alone, no confirmation


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


def image_sets(n: int) -> dict[str, list[Image.Image]]:
    """Name -> ``n`` images: the synthetic set (generated once), the framed set, and BUSI when present."""
    from framed_set import framed_set

    from medtune.data.tools.synth import generate

    out = WORK / f"synth-dup-n{n}"
    if not (out / "train.json").is_file():
        generate(out, n=n, size=128, seed=0)
    sets = {
        "synthetic": [Image.open(f) for f in sorted((out / "images").glob("*.png"))[:n]],
        "framed": framed_set(n),
    }
    if BUSI.is_dir():
        files = sorted(BUSI.glob("*.png"))
        sets["BUSI"] = [Image.open(f) for f in sorted(random.Random(0).sample(files, min(n, len(files))))]
    return sets


def busi_scenes(names: list[str], label: np.ndarray) -> np.ndarray:
    """``label`` with every group of ``busi_same_scene.json`` (file names) joined into one original."""
    index = {name: i for i, name in enumerate(names)}
    pairs = [(int(label[i]), i) for i in range(len(label)) if label[i] != i]  # each image to its group's label
    for group in json.loads(SAME_SCENE.read_text())["groups"]:
        present = [index[name] for name in group if name in index]
        pairs += [(present[0], other) for other in present[1:]]
    return labels(len(label), pairs)


def write_montages(folder: Path, name: str, groups: list[list[int]], originals: list[Image.Image]) -> None:
    """One PNG per false group: its originals (copies left out) side by side at 256 x 200, named by file."""
    from PIL import ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    n = len(originals)
    for number, group in enumerate(groups):
        members = sorted({i % n for i in group})
        sheet = Image.new("L", (260 * len(members), 220), 255)
        draw = ImageDraw.Draw(sheet)
        for k, i in enumerate(members):
            sheet.paste(originals[i].convert("L").resize((256, 200)), (260 * k, 0))
            draw.text((260 * k + 2, 202), Path(getattr(originals[i], "filename", "") or str(i)).name, fill=0)
        sheet.save(folder / f"{name}-false-group-{number}.png")
    print(f"{name}: {len(groups)} false group montage(s) in {folder}")


def labels(n_images: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    """Component label per image after union-find over ``pairs``."""
    label = np.arange(n_images)
    for group in duplicates.union_groups(list(range(n_images)), pairs):
        label[group] = group[0]
    return label


def measure(label: np.ndarray, origin: np.ndarray, pairs: list[tuple[int, int]]) -> tuple[float, float, float]:
    """(recall, false-pair rate after grouping, pairwise false rate); images n.. are copies of 0..n-1."""
    n = len(label) // 2
    recall = float(np.mean(label[:n] == label[n:]))
    distinct = np.triu(np.ones((len(label), len(label)), dtype=bool), 1) & (origin[:, None] != origin[None, :])
    grouped = float((label[:, None] == label[None, :])[distinct].mean())
    pairwise = sum(origin[i] != origin[j] for i, j in pairs) / distinct.sum()
    return recall, grouped, float(pairwise)


def false_groups(groups: list[list[int]], origin: np.ndarray) -> list[int]:
    """Sizes of the groups that hold images of more than one original."""
    return [len(g) for g in groups if len(set(origin[g])) > 1]


def grid_rows(prints: list[duplicates.Fingerprint], origin: np.ndarray) -> list[str]:
    """One table line per (threshold, similarity) of the grid, pairwise (union-find, no coherence check)."""
    thumbs = np.stack([p.thumb for p in prints])
    weights = content_weights(thumbs)
    hashes = np.stack([p.bits for p in prints])
    candidates = duplicates.candidate_pairs(hashes, coarse_rows(thumbs, weights), threshold=max(THRESHOLDS))
    bits = [int(np.bitwise_count(hashes[i] ^ hashes[j]).sum()) for i, j in candidates]
    similarity = pair_similarity(thumbs, candidates, weights=weights)
    rows = []
    for threshold in THRESHOLDS:
        for floor in SIMILARITIES:
            pairs = [
                p for p, b, s in zip(candidates, bits, similarity) if b <= threshold and (floor is None or s >= floor)
            ]
            recall, grouped, pairwise = measure(labels(len(prints), pairs), origin, pairs)
            shown = "hash only" if floor is None else f"{floor:.2f}"
            rows.append(f"{threshold:>5}{shown:>11}{recall:>9.3f}{grouped:>23.4%}{pairwise:>24.4%}")
    return rows


def run_set(
    name: str, originals: list[Image.Image], seed: int, *, grid: bool = False, montages: Path | None = None
) -> bool:
    """Print the defaults' result (and optionally the grid) for one image set; returns whether the targets are met."""
    rng = random.Random(seed)
    images = originals + [plant(im, rng) for im in originals]
    started = time.time()
    prints = [duplicates.image_fingerprint(im) for im in images]
    fingerprinting = time.time() - started
    n = len(originals)
    known = labels(n, duplicates.near_pairs(np.stack([p.bits for p in prints[:n]]), KNOWN_BITS))
    if name == "BUSI":
        known = busi_scenes([Path(im.filename).name for im in originals], known)
    else:
        known = np.arange(n)
    origin = np.concatenate([known, known])
    started, cpu = time.time(), time.process_time()
    setting = duplicates.Setting()
    found = duplicates.near_grouping(dict(enumerate(prints)), setting)  # the product's path, as `check` runs it
    grouping, cpu = time.time() - started, time.process_time() - cpu
    label = np.arange(2 * n)
    for group in found.groups + found.suspicious:
        label[group] = group[0]
    recall, grouped, _ = measure(label, origin, [])
    false = false_groups(found.groups + found.suspicious, origin)
    if montages is not None:
        mixed = [g for g in found.groups + found.suspicious if len(set(origin[g])) > 1]
        write_montages(montages, name, mixed, originals)
    per_1000 = (fingerprinting + grouping) / (2 * n) * 1000
    print(
        f"\n{name}: {n} images ({len(set(known))} originals after joining known duplicates: <= {KNOWN_BITS} bits"
        f"{', and the scenes of ' + SAME_SCENE.name if name == 'BUSI' else ''}) "
        f"+ {n} planted copies, seed {seed}; fingerprints {fingerprinting:.1f}s, grouping {grouping:.1f}s "
        f"({cpu:.1f}s of CPU), "
        f"{per_1000:.1f}s per 1,000 images, {load()}"
    )
    if grid:
        print(f"{'bits':>5}{'similarity':>11}{'recall':>9}{'false pairs (grouped)':>23}{'false pairs (pairwise)':>24}")
        print("\n".join(grid_rows(prints, origin)))
    largest = max(false, default=0)
    ok = recall >= TARGET[0] and grouped <= TARGET[1] and largest <= TARGET[2]
    print(
        f"{name} default ({setting.label}): recall {recall:.3f}, false pairs {grouped:.4%}, "
        f"{len(false)} false groups (largest {largest} images), {len(found.groups)} groups, "
        f"{len(found.suspicious)} suspicious (sizes {[len(g) for g in found.suspicious]}) "
        f"(targets: recall >= {TARGET[0]}, false pairs <= {TARGET[1]:.1%}, largest false group <= {TARGET[2]}): "
        f"{'met' if ok else 'NOT met'}"
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 images per set instead of 780")
    parser.add_argument("--grid", action="store_true", help="also print the pairwise grid of thresholds")
    parser.add_argument("--framed-only", type=int, metavar="N", help="only the framed set, N images (timing)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the planted copies' transforms")
    parser.add_argument("--montages", type=Path, metavar="DIR", help="write a PNG of every false group's originals")
    args = parser.parse_args()
    if args.framed_only:
        from framed_set import framed_set

        return 0 if run_set("framed", framed_set(args.framed_only), args.seed) else 1
    sets = image_sets(300 if args.quick else 780)
    results = [
        run_set(name, images, args.seed, grid=args.grid, montages=args.montages) for name, images in sets.items()
    ]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
