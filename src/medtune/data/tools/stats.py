"""``stats``: class counts, label sets, mask coverage and image sizes of one COCO file.

Image sizes come from the JSON's width/height (the image header is read, from ``--images``, only
for entries without them: ``imageio.image_size``, upright, DICOM included). Mask coverage of an
image is the summed area of its annotations (the ``area`` field, else the polygons' area) over
width x height, capped at 1; the distribution is over images with a lesion. An image "without lesion" has annotations whose segmentations are all empty.
Duplicate groups (``medtune.data.duplicates``) are counted when the image folder is known; images
whose files cannot be read are counted as ``unreadable`` and left out.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from medtune.data import cocoio, dataset_duplicates, duplicates, masks
from medtune.data.imageio import image_size


def coco_stats(coco: dict, images_dir: Path | None = None, *, near: duplicates.Setting = duplicates.Setting()) -> dict:
    """Statistics of ``coco`` as a JSON-ready dict (see the module docstring)."""
    names = {c["id"]: c["name"] for c in coco["categories"]}  # unknown ids get "unknown id N" rows
    by_image: dict[int, list[dict]] = defaultdict(list)
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    per_class = {c["name"]: {"id": c["id"], "annotations": 0, "images": 0} for c in coco["categories"]}
    for ann in coco["annotations"]:
        name = names.get(ann["category_id"], f"unknown id {ann['category_id']}")
        per_class.setdefault(name, {"id": ann["category_id"], "annotations": 0, "images": 0})["annotations"] += 1
    sizes, coverage, multi, no_lesion, no_annotation = Counter(), [], 0, 0, 0
    for img in coco["images"]:
        width, height = _size(img, images_dir)
        sizes[(width, height)] += 1
        anns = by_image.get(img["id"], [])
        labels = {names.get(a["category_id"], f"unknown id {a['category_id']}") for a in anns}
        for name in labels:
            per_class[name]["images"] += 1
        multi += len(labels) > 1
        no_annotation += not anns
        area = sum(_area(a) for a in anns)
        if anns and area == 0:
            no_lesion += 1
        elif area > 0 and width * height > 0:
            coverage.append(min(area / (width * height), 1.0))
    return {
        "images": len(coco["images"]),
        "annotations": len(coco["annotations"]),
        "classes": per_class,
        "images_with_several_classes": multi,
        "images_without_lesion": no_lesion,
        "images_without_annotations": no_annotation,
        "coverage": _quartiles(coverage),
        "sizes": _sizes(sizes),
        "duplicate_groups": _duplicate_groups(coco, images_dir, near),
    }


def _duplicate_groups(coco: dict, images_dir: Path | None, near: duplicates.Setting) -> dict:
    if images_dir is None:
        return {"groups": None}
    groups, unreadable = dataset_duplicates.image_groups(coco["images"], images_dir, near)
    return {
        "threshold": near.threshold,
        "min_similarity": near.min_similarity,
        "groups": len(groups),
        "images": sum(map(len, groups)),
        "unreadable": len(unreadable),
    }


def _size(img: dict, images_dir: Path | None) -> tuple[int, int]:
    if isinstance(img.get("width"), int) and isinstance(img.get("height"), int):
        return img["width"], img["height"]
    if images_dir is None:
        return 0, 0
    try:
        return image_size(images_dir / img["file_name"])
    except cocoio.DataError:
        return 0, 0


def _area(ann: dict) -> float:
    """Annotation area: the ``area`` field when it is a number, else the polygons' area."""
    if isinstance(ann.get("area"), (int, float)):
        return float(ann["area"])
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        return sum(masks.polygon_area(p) for p in seg if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0)
    return 0.0


def _quartiles(values: list[float]) -> dict:
    if not values:
        return {"images": 0}
    q = np.percentile(values, [0, 25, 50, 75, 100])
    return {"images": len(values), **{k: round(float(v), 4) for k, v in zip(("min", "q1", "median", "q3", "max"), q)}}


def _sizes(sizes: Counter) -> dict:
    if not sizes:
        return {"distinct": 0}
    widths = [w for w, _ in sizes]
    heights = [h for _, h in sizes]
    return {
        "distinct": len(sizes),
        "width": [min(widths), max(widths)],
        "height": [min(heights), max(heights)],
        "most_common": [[f"{w}x{h}", n] for (w, h), n in sizes.most_common(5)],
    }


def format_stats(stats: dict) -> str:
    """The statistics as a plain text report."""
    width = max([len(name) for name in stats["classes"]] + [5]) + 2
    lines = [
        f"{stats['images']} images, {stats['annotations']} annotations",
        "",
        f"{'class':<{width}}{'id':>5}{'annotations':>13}{'images':>8}",
    ]
    for name, row in stats["classes"].items():
        lines.append(f"{name:<{width}}{row['id']:>5}{row['annotations']:>13}{row['images']:>8}")
    lines += [
        "",
        f"images with several classes: {stats['images_with_several_classes']}",
        f"images without lesion (empty segmentation): {stats['images_without_lesion']}",
        f"images without annotations: {stats['images_without_annotations']}",
    ]
    cov = stats["coverage"]
    if cov["images"]:
        lines.append(
            f"mask coverage over {cov['images']} images with a lesion: min {cov['min']:.4f}  q1 {cov['q1']:.4f}  "
            f"median {cov['median']:.4f}  q3 {cov['q3']:.4f}  max {cov['max']:.4f}"
        )
    sizes = stats["sizes"]
    if sizes["distinct"]:
        common = ", ".join(f"{s} ({n})" for s, n in sizes["most_common"])
        lines.append(
            f"image sizes: {sizes['distinct']} distinct, width {sizes['width'][0]}-{sizes['width'][1]}, "
            f"height {sizes['height'][0]}-{sizes['height'][1]}; most common {common}"
        )
    dup = stats["duplicate_groups"]
    if dup["groups"] is not None:
        lines.append(
            f"duplicate groups (near duplicates {duplicates.Setting(dup['threshold'], dup['min_similarity']).label}): "
            f"{dup['groups']} groups, "
            f"{dup['images']} images" + (f"; {dup['unreadable']} image files unreadable" if dup["unreadable"] else "")
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--coco", type=Path, required=True, help="COCO JSON file")
    parser.add_argument(
        "--images", type=Path, help="image folder (default: info.images_dir, images/ beside FILE, FILE's folder)"
    )
    parser.add_argument("--json", action="store_true", help="print the statistics as JSON")
    dataset_duplicates.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        coco = cocoio.require_keys(args.coco, cocoio.load_coco(args.coco))
        near = dataset_duplicates.setting_from_args(args)
        stats = coco_stats(coco, cocoio.images_dir_for(args.coco, coco, args.images), near=near)
    except cocoio.DataError as err:
        return cocoio.fail(err)
    print(json.dumps(stats, indent=1) if args.json else format_stats(stats))
    return 0
