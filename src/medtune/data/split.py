"""``split``: stratified, optionally grouped, train/val/test split of one COCO file.

Writes ``DIR/train.json``, ``DIR/val.json`` and ``DIR/test.json``. ``file_name`` entries are kept
unchanged (no image is copied); each output records the absolute source image folder in
``info.images_dir``, which ``medtune.data.coco`` and the other tools read, so the splits work from any
``DIR``. ``info.split`` records the split name, seed, fractions, grouping field and source file.

Stratification: an image's key is the sorted tuple of its category names (several for multi-label
images, empty for none). With ``--group-by FIELD`` the units are the groups of images sharing the
image-level ``FIELD`` (e.g. ``patient_id``), keyed by their most common image key, so no group
straddles two splits. Within a key, units are shuffled (``seed``), larger groups first, and each
goes to the split furthest below its share of that key (ties: furthest below its overall share).
A class too small to reach every split gives a warning, not an error. Same seed, same split.

Duplicates: by default each near-duplicate group (``medtune.data.duplicates`` with the setting
``near``; exact copies included) is merged into one unit with the units of its images, so a copy of
a test image never lands in train. ``--ignore-duplicates`` (``near=None``)
turns this off; image files that cannot be read are left out of the grouping with a warning.

Balance: when kept-whole units make a split more than 1.5x its share of the images, or leave a class
with less than two thirds of its share in a split, ``SplitResult.unbalanced`` (printed as a warning)
says so in one line with the sizes and the unit to blame (``medtune.data.balance``).
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from medtune.data import balance, cocoio, dataset_duplicates, duplicates

SPLITS = ("train", "val", "test")


@dataclass
class SplitResult:
    """Image ids per split, images per class per split, and warnings about small classes."""

    image_ids: dict[str, list[int]]
    class_counts: dict[str, dict[str, int]]  # class name -> split -> images containing it
    images_dir: Path
    warnings: list[str] = field(default_factory=list)
    duplicate_groups: list[list[dict]] = field(default_factory=list)  # each kept inside one split
    unbalanced: str = ""  # one line naming the splits that are not near their shares (``medtune.data.balance``)


def split_coco(
    coco_path: Path,
    out_dir: Path,
    *,
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
    images_dir: Path | None = None,
    group_by: str | None = None,
    near: duplicates.Setting | None = duplicates.Setting(),
) -> SplitResult:
    """Split ``coco_path`` into ``out_dir/{train,val,test}.json`` (see the module docstring)."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise cocoio.DataError(f"--val {val} --test {test}: fractions must be >= 0 and sum to less than 1")
    coco = cocoio.require_keys(coco_path, cocoio.load_coco(coco_path))
    images_dir = cocoio.images_dir_for(coco_path, coco, images_dir)
    keys = image_keys(coco_path, coco)
    units = units_of(coco_path, coco, group_by)
    groups, suspicious, unreadable = [], [], []
    if near is not None:
        groups, suspicious, unreadable = dataset_duplicates.image_grouping(coco["images"], images_dir, near)
        units = merge_units(units, groups)
    shares = {"train": 1 - val - test, "val": val, "test": test}
    where = allocate(strata_of(units, keys), shares, random.Random(seed))
    image_ids = {s: sorted(i for unit, ids in units.items() if where[unit] == s for i in ids) for s in SPLITS}
    info = {
        "source": str(Path(coco_path).resolve()),
        "seed": seed,
        "val": val,
        "test": test,
        "group_by": group_by,
        "near_threshold": None if near is None else near.threshold,
        "near_similarity": None if near is None else near.min_similarity,
        "near_accept_groups": None if near is None else near.accept_large,
    }
    for split in SPLITS:
        chosen = set(image_ids[split])
        out = {
            **coco,
            "info": {**coco.get("info", {}), "split": {"name": split, **info}},
            "images": [img for img in coco["images"] if img["id"] in chosen],
            "annotations": [a for a in coco["annotations"] if a["image_id"] in chosen],
        }
        out["info"]["images_dir"] = str(images_dir)
        cocoio.write_json_atomic(Path(out_dir) / f"{split}.json", out)
    result = _summarise(coco, keys, image_ids, shares, images_dir)
    result.duplicate_groups = groups
    result.warnings += dataset_duplicates.suspicious_lines(suspicious, len(coco["images"]))
    kinds = balance.unit_kinds(units, {img["id"] for g in groups for img in g}, group_by)
    result.unbalanced = balance.imbalance("images per split", shares, where, units, keys, kinds)
    if unreadable:
        result.warnings.append(
            f"{len(unreadable)} image files could not be read (first: {unreadable[0]}) and are left out of duplicate grouping; run `python -m medtune.data check`"
        )
    orphans = sum(ann["image_id"] not in keys for ann in coco["annotations"])
    if orphans:
        result.warnings.append(
            f"{orphans} annotations point at unknown image ids and were left out (run `python -m medtune.data check`)"
        )
    return result


def image_keys(path: Path, coco: dict) -> dict[int, tuple[str, ...]]:
    """Sorted category names of each image; errors on duplicate ids and unknown categories."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    labels: dict[int, set[str]] = {}
    for img in coco["images"]:
        if img["id"] in labels:
            raise cocoio.DataError(
                f"{path}: image id {img['id']} used twice; run `python -m medtune.data check --coco {path} --fix OUT`"
            )
        labels[img["id"]] = set()
    for ann in coco["annotations"]:
        if ann["category_id"] not in names:
            raise cocoio.DataError(
                f"{path}: annotation {ann['id']} has unknown category_id {ann['category_id']}; run `python -m medtune.data check`"
            )
        if ann["image_id"] in labels:
            labels[ann["image_id"]].add(names[ann["category_id"]])
    return {i: tuple(sorted(s)) for i, s in labels.items()}


def units_of(path: Path, coco: dict, group_by: str | None) -> dict[object, list[int]]:
    """Image ids per unit: one image each, or the images sharing ``image[group_by]``."""
    if group_by is None:
        return {("image", img["id"]): [img["id"]] for img in coco["images"]}
    units: dict[object, list[int]] = defaultdict(list)
    for img in coco["images"]:
        value = img.get(group_by)
        if value is None or not isinstance(value, (str, int, float)):
            raise cocoio.DataError(
                f"{path}: image {img['id']} has no string or number '{group_by}' (needed by --group-by)"
            )
        units[("group", value)].append(img["id"])
    return units


def merge_units(units: dict[object, list[int]], groups: list[list[dict]]) -> dict[object, list[int]]:
    """``units`` with the units of each duplicate group's images merged into one (keyed by its first)."""
    keys = list(units)
    index = {unit: k for k, unit in enumerate(keys)}
    unit_of = {i: unit for unit, ids in units.items() for i in ids}
    pairs = [(index[unit_of[g[0]["id"]]], index[unit_of[img["id"]]]) for g in groups for img in g[1:]]
    merged = {unit: list(ids) for unit, ids in units.items()}
    for component in duplicates.union_groups(keys, pairs):
        for unit in component[1:]:
            merged[component[0]] += merged.pop(unit)
    return merged


def strata_of(
    units: dict[object, list[int]], keys: dict[int, tuple[str, ...]]
) -> dict[tuple, list[tuple[object, int]]]:
    """Units by stratum (the most common class key of their images) as ``(unit, images)`` pairs."""
    strata: dict[tuple, list[tuple[object, int]]] = defaultdict(list)
    for unit, ids in units.items():
        key = min(Counter(keys[i] for i in ids).most_common(), key=lambda kc: (-kc[1], kc[0]))[0]
        strata[key].append((unit, len(ids)))
    return strata


def allocate(strata: dict[tuple, list[tuple[object, int]]], shares: dict[str, float], rng: random.Random) -> dict:
    """Part of each unit (a key of ``shares``: a split, or a fold): largest strata first, each unit to the
    part most behind its share."""
    active = [s for s in shares if shares[s] > 0]
    total = sum(size for units in strata.values() for _, size in units)
    overall = dict.fromkeys(active, 0)
    where = {}
    for key in sorted(strata, key=lambda k: (-sum(size for _, size in strata[k]), k)):
        units = sorted(strata[key], key=repr)
        rng.shuffle(units)
        units.sort(key=lambda unit: -unit[1])  # stable: equal sizes stay shuffled
        n = sum(size for _, size in units)
        local = dict.fromkeys(active, 0)
        for unit, size in units:
            best = max(active, key=lambda s: (1 - local[s] / (shares[s] * n), 1 - overall[s] / (shares[s] * total)))
            where[unit] = best
            local[best] += size
            overall[best] += size
    return where


def _summarise(
    coco: dict, keys: dict, image_ids: dict[str, list[int]], shares: dict[str, float], images_dir: Path
) -> SplitResult:
    counts = {c["name"]: dict.fromkeys(SPLITS, 0) for c in coco["categories"]}
    for split, ids in image_ids.items():
        for i in ids:
            for name in keys[i]:
                counts[name][split] += 1
    warnings = []
    for name, per_split in counts.items():
        empty = [s for s in SPLITS if shares[s] > 0 and per_split[s] == 0]
        if empty:
            warnings.append(f"class '{name}' ({sum(per_split.values())} images) is missing from {', '.join(empty)}")
    return SplitResult(image_ids, counts, images_dir, warnings)


def format_table(result: SplitResult) -> str:
    """Images per class and split as a small text table."""
    width = max([len(name) for name in result.class_counts] + [6]) + 2
    lines = [f"{'class':<{width}}" + "".join(f"{s:>7}" for s in (*SPLITS, "total"))]
    rows = list(result.class_counts.items())
    rows.append(("images", {s: len(ids) for s, ids in result.image_ids.items()}))
    for name, per_split in rows:
        values = [per_split[s] for s in SPLITS]
        lines.append(f"{name:<{width}}" + "".join(f"{v:>7}" for v in (*values, sum(values))))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--coco", type=Path, required=True, help="COCO JSON file to split")
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="folder for train.json, val.json, test.json"
    )
    parser.add_argument(
        "--images", type=Path, help="image folder (default: info.images_dir, images/ beside FILE, FILE's folder)"
    )
    parser.add_argument("--val", type=float, default=0.15, help="share of images in val (default 0.15)")
    parser.add_argument("--test", type=float, default=0.15, help="share of images in test (default 0.15)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--group-by", metavar="FIELD", help="image field whose groups stay in one split, e.g. patient_id"
    )
    dataset_duplicates.add_arguments(
        parser,
        off_flag="--ignore-duplicates",
        off_help="do not keep near-duplicate groups inside one split (the behaviour before duplicate grouping)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        near = None if args.ignore_duplicates else dataset_duplicates.setting_from_args(args)
        result = split_coco(
            args.coco,
            args.out,
            val=args.val,
            test=args.test,
            seed=args.seed,
            images_dir=args.images,
            group_by=args.group_by,
            near=near,
        )
    except cocoio.DataError as err:
        return cocoio.fail(err)
    for warning in [*result.warnings, *([result.unbalanced] if result.unbalanced else [])]:
        print(f"warning: {warning}", file=sys.stderr)
    print(format_table(result))
    if args.ignore_duplicates:
        print("duplicates: not grouped (--ignore-duplicates); `check --coco DIR` lists groups that straddle splits")
    else:
        n_images = sum(map(len, result.duplicate_groups))
        print(
            f"duplicates: kept {len(result.duplicate_groups)} near-duplicate groups ({n_images} images) each inside one split "
            f"({near.label})"
        )
    print(f"split: wrote train.json, val.json, test.json to {args.out} (info.images_dir: {result.images_dir})")
    return 0
