"""Embedded synthetic dermoscopy-like dataset: ``python -m medtune.data synth --out DIR``.

Every image holds one lesion (an irregular polygon, stored as its COCO segmentation) of one of three
classes, told apart by colour mix, border irregularity and internal texture drawn from overlapping
per-class distributions, plus a large spurious coloured corner marker that agrees with the class in
train and val and is independent of it in test (``shift``: a deployment shift). Each image is drawn
from a numpy Generator seeded by ``(seed, image_id)`` and the split plan from one seeded by ``seed``,
so the same arguments give byte-identical files.

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

from medtune.data.tools.synth_render import (  # noqa: F401 - re-exported: the dataset's public constants
    AREA_SHARE,
    CLASSES,
    FINDING_SHARE,
    FINDINGS,
    GENERATED,
    MARKER_RGB,
    SPLITS,
    TRAITS,
    _shoelace,
    render,
)

SHIFTS: dict[str, tuple[str, ...]] = {"test": ("test",), "val+test": ("val", "test"), "none": ()}


def assign_splits(
    n: int,
    *,
    seed: int = 0,
    train_share: float = 0.6,
    val_share: float = 0.2,
    cue_agreement: float = 0.9,
    shift: str = "test",
) -> dict[str, list[tuple[int, int]]]:
    """Plan (class index, marker class index) for every image of each split.

    Classes are balanced (``n // 3`` each, the remainder to the first classes) and split per class.
    A split outside ``SHIFTS[shift]`` follows the training distribution: exactly
    ``round(cue_agreement * n_split)`` markers agree with the class and the others name another class
    at random. A shifted split (by default test alone: the deployment shift, after a search that
    selected on a val split like train) gets the class shifted by a balanced random offset, so a third
    of the markers agree and each class gets each marker colour about equally.
    """
    if shift not in SHIFTS:
        raise ValueError(f"shift must be one of {', '.join(SHIFTS)}, got '{shift}'")
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
        if split not in SHIFTS[shift]:  # exactly round(cue_agreement * n) offsets are 0, the others 1 or 2
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
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": len(CLASSES) + finding + 1,
        "segmentation": [],
        "area": 0,
        "bbox": bbox,
        "iscrowd": 0,
    }


def _annotation(image_id: int, label: int, poly: np.ndarray) -> dict:
    """COCO annotation of one lesion polygon; area by the shoelace formula, bbox [x, y, w, h]."""
    low, high = poly.min(0), poly.max(0)
    bbox = [float(low[0]), float(low[1]), float(high[0] - low[0]), float(high[1] - low[1])]
    return {
        "id": image_id,
        "image_id": image_id,
        "category_id": label + 1,
        "segmentation": [poly.ravel().tolist()],
        "area": round(_shoelace(poly), 2),
        "bbox": [round(v, 2) for v in bbox],
        "iscrowd": 0,
    }


def _write_split(
    folder: Path,
    split: str,
    items: list[tuple[int, int]],
    first_id: int,
    size: int,
    info: dict,
    findings: list[tuple[int, ...]] | None = None,
) -> None:
    """Render the images of one split into ``folder/images`` and write ``folder/<split>.json``.

    Finding annotations get ids ``image_id + (f + 1) * n``, unique across the three files.
    """
    coco: dict = {"info": {**info, "split": split}, "images": [], "annotations": []}
    for i, (image_id, (label, marker)) in enumerate(enumerate(items, start=first_id)):
        shown = findings[i] if findings else ()
        image, poly, boxes = render(
            np.random.default_rng([info["seed"], image_id]),
            size,
            label,
            marker,
            findings=shown,
            finding_rng=np.random.default_rng([info["seed"], image_id, 1]),
        )
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
        coco["categories"] += [
            {"id": first + i, "name": name, "supercategory": "artefact"} for i, name in enumerate(FINDINGS)
        ]
    (folder / f"{split}.json").write_text(json.dumps(coco) + "\n")


def _readme(info: dict, counts: dict[str, dict[str, int]], agreement: dict[str, float]) -> str:
    """README.md text: how the folder was made, what the classes and the spurious cue are, the layout."""
    traits = "\n".join(f"| {k} | " + " | ".join(f"{m:.2f} ± {s:.2f}" for m, s in v) + " |" for k, v in TRAITS.items())
    splits = "\n".join(f"- `{s}.json`: {', '.join(f'{k} {v}' for k, v in c.items())}" for s, c in counts.items())
    agree = ", ".join(f"{s} {a:.2f}" for s, a in agreement.items())
    return f"""# Synthetic dermoscopy-like lesions

Made by `python -m medtune.data synth` (`src/medtune/data/synth.py`) with seed {info["seed"]}, {info["n"]} images
of {info["size"]} x {info["size"]} px; the same arguments reproduce these files byte for byte.

## Classes
One lesion per image: an irregular polygon (the COCO `segmentation`) on textured skin with 1-4
hairs, covering about {AREA_SHARE[0]:.0%}-{AREA_SHARE[1]:.0%} of the image. The classes (category ids 1-3:
{", ".join(CLASSES)}) differ only by the lesion; each trait is drawn per image from a normal
(mean ± sd below, clipped to [0, 1]) that overlaps between classes, so no trait alone decides.

| trait | {" | ".join(CLASSES)} |
|---|---|---|---|
{traits}

irregularity/asymmetry: border harmonics; dark_share: black or blue-grey blotches; blue: blue-grey
share of them; blotch: internal texture and dark dots; darkness: brown shade.

## Spurious cue
A large coloured patch in a corner (like a sticker, ruler or ink mark: about a fifth of the side),
red/green/blue for {"/".join(CLASSES)}; the image entry's `marker_class` is the category it names.
Shifted splits ({info["shift"]}: {", ".join(SHIFTS[info["shift"]]) or "none"}) have a marker independent of the class
(a balanced random shift, so a third agree); every other split names the class for
{info["cue_agreement"]:.0%} of its images, as train does. Share of images whose marker names their class:
{agree}. A whole-image model that reads the marker scores well on the unshifted splits and drops on the
shifted ones; a model that looks at the lesion does not.

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
        (
            0 < train_share and 0 <= val_share and train_share + val_share <= 1,
            f"need 0 < train_share, 0 <= val_share, train_share + val_share <= 1; got {train_share}, {val_share}",
        ),
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
    out: Path,
    *,
    n: int = 300,
    size: int = 64,
    seed: int = 0,
    train_share: float = 0.6,
    val_share: float = 0.2,
    cue_agreement: float = 0.9,
    shift: str = "test",
    multilabel: bool = False,
    force: bool = False,
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
        cue_agreement: share of images whose marker names their class, in every split not shifted.
        shift: which splits have a marker independent of the class (``SHIFTS``): ``test`` (default, a
            deployment shift: val follows train, so the search rewards a model that reads the marker),
            ``val+test``, or ``none``.
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
    if shift not in SHIFTS:
        raise ValueError(f"shift must be one of {', '.join(SHIFTS)}, got '{shift}'")
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a folder")
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists and is not empty; pass --force to overwrite it")
    plan = assign_splits(
        n, seed=seed, train_share=train_share, val_share=val_share, cue_agreement=cue_agreement, shift=shift
    )
    info = {
        "description": "medtune synthetic dermoscopy-like lesions (medtune.data.tools.synth)",
        "seed": seed,
        "size": size,
        "n": n,
        "cue_agreement": cue_agreement,
        "shift": shift,
        "train_share": train_share,
        "val_share": val_share,
    }
    if multilabel:
        info["multilabel"] = True  # only then: the single-label files stay byte-identical
    findings = assign_findings(plan, seed=seed) if multilabel else None
    found = (
        {s: {name: sum(f in fs for fs in findings[s]) for f, name in enumerate(FINDINGS)} for s in SPLITS}
        if findings
        else None
    )
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
        (staging / "README.md").write_text(
            _readme(info, counts, agreement) + (_readme_findings(found) if found else "")
        )
        _move_into(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary = {"path": str(out), "counts": counts, "marker_agreement": agreement}
    return {**summary, "findings": found} if found else summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m medtune.data synth``."""
    parser.add_argument("--out", type=Path, required=True, help="destination folder (must be empty or missing)")
    parser.add_argument("--n", type=int, default=300, help="number of images over all splits (default 300)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--cue-agreement", type=float, default=0.9, help="train share whose marker names the class")
    parser.add_argument(
        "--shift",
        default="test",
        choices=sorted(SHIFTS),
        help="splits whose marker is independent of the class (default test: val follows train)",
    )
    parser.add_argument("--multilabel", action="store_true", help="add the ruler and ink_mark artefact findings")
    parser.add_argument("--defects", action="store_true", help="then inject known defects (medtune.data.tools.defects)")
    parser.add_argument("--force", action="store_true", help="overwrite the generated files in a non-empty --out")


def run(args: argparse.Namespace) -> int:
    """Generate the dataset (then inject defects if asked); prints a one-line summary."""
    try:
        summary = generate(
            args.out,
            n=args.n,
            size=args.size,
            seed=args.seed,
            cue_agreement=args.cue_agreement,
            shift=args.shift,
            multilabel=args.multilabel,
            force=args.force,
        )
    except (FileExistsError, ValueError) as err:
        print(f"synth: {err}", file=sys.stderr)
        return 1
    if args.defects:
        from medtune.data.tools.defects import inject_defects

        inject_defects(Path(summary["path"]), seed=args.seed)
    counts = ", ".join(f"{s} {sum(c.values())}" for s, c in summary["counts"].items())
    print(f"synth: wrote {summary['path']} ({counts}; {args.size} px, seed {args.seed})")
    return 0
