"""``check --fix``: write a copy of a checked COCO file without its problems, and list what went.

What is dropped for each kind of problem is decided by ``check`` (each ``Problem.entry``); this
module removes those entries, then annotations of removed images and categories, then images left
without annotations, and records every removal with its reasons.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from pathlib import Path

from medtune.data import cocoio
from medtune.data.problems import Report


def fix_coco(report: Report, out: Path) -> dict:
    """Write a copy of the checked COCO without its problems to ``out``; returns what was removed.

    The removal list (entries with their reasons) is also written to ``<out stem>.removed.json``.
    """
    coco = copy.deepcopy(report.coco)
    reasons: dict[tuple[str, int], list[str]] = defaultdict(list)
    for p in report.problems:
        if p.entry is not None:
            reasons[p.entry].append(f"{p.kind}: {p.detail}")
    keep = {key: [i for i in range(len(coco[key])) if (key, i) not in reasons] for key in ("images", "categories")}
    image_ids = {coco["images"][i]["id"] for i in keep["images"]}
    category_ids = {coco["categories"][i]["id"] for i in keep["categories"]}
    kept_annotations = []
    for j, ann in enumerate(coco["annotations"]):
        if ("annotations", j) not in reasons and ann["image_id"] not in image_ids:
            reasons[("annotations", j)].append("its image was removed")
        elif ("annotations", j) not in reasons and ann["category_id"] not in category_ids:
            reasons[("annotations", j)].append("its category was removed")
        if ("annotations", j) not in reasons:
            kept_annotations.append(ann)
    annotated = {ann["image_id"] for ann in kept_annotations}
    for i in keep["images"]:
        if coco["images"][i]["id"] not in annotated:
            reasons[("images", i)].append("all its annotations were removed")
    removed = {
        key: [{"entry": coco[key][i], "reasons": why} for (k, i), why in sorted(reasons.items()) if k == key]
        for key in ("images", "annotations", "categories")
    }
    coco.update(
        images=[img for i, img in enumerate(coco["images"]) if ("images", i) not in reasons],
        annotations=kept_annotations,
        categories=[coco["categories"][i] for i in keep["categories"]],
    )
    cocoio.record_images_dir(coco, out, report.images_dir)
    cocoio.write_json_atomic(out, coco)
    cocoio.write_json_atomic(removed_path(out), removed)
    return removed


def removed_path(out: Path) -> Path:
    """Where ``--fix OUT`` lists what it removed: ``OUT`` with ``.removed.json`` for ``.json``."""
    return Path(out).with_name(Path(out).stem + ".removed.json")
