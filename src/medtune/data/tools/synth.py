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

This module writes the dataset (the COCO files, the images, the README, atomically) and holds the
command; ``synth_plan`` plans each image's class, marker and findings, ``synth_render`` draws an
image and ``synth_readme`` writes the README's text.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from medtune.data.tools.synth_plan import SHIFTS, assign_findings, assign_splits
from medtune.data.tools.synth_readme import readme
from medtune.data.tools.synth_render import CLASSES, FINDINGS, GENERATED, SPLITS, _shoelace, render


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
        (staging / "README.md").write_text(readme(info, counts, agreement, found))
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
