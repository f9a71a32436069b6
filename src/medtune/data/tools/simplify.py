"""``simplify``: regroup fine category names into coarse classes with a YAML map.

``MAP.yaml`` is a flat mapping ``{fine_name: coarse_name}``. The output's categories are the coarse
names with ids 1..K in order of first appearance in the map (so ids do not depend on the data);
annotations get the coarse id. A category of the file missing from the map is an error naming it,
unless ``--drop-unmapped``: then its annotations, and the images left without annotations, are
dropped and counted. ``info.simplified`` records the map; ``info.images_dir`` is written when the
output lies away from the images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from medtune.data import cocoio


def load_map(path: Path) -> dict[str, str]:
    """Read ``{fine_name: coarse_name}`` from YAML; errors name the file and the bad key."""
    try:
        mapping = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise cocoio.DataError(f"--map {path}: file not found") from None
    except (OSError, yaml.YAMLError) as err:
        raise cocoio.DataError(f"--map {path}: not readable YAML ({' '.join(str(err).split())})") from None
    if not isinstance(mapping, dict) or not mapping:
        raise cocoio.DataError(f"--map {path}: expected a non-empty mapping 'fine_name: coarse_name'")
    for fine, coarse in mapping.items():
        if not isinstance(fine, str) or not isinstance(coarse, str) or not coarse:
            raise cocoio.DataError(f"--map {path}: key '{fine}' must map a name to a non-empty name, got {coarse!r}")
    return mapping


def simplify_coco(coco: dict, mapping: dict[str, str], *, drop_unmapped: bool = False) -> tuple[dict, dict]:
    """Remap ``coco`` to the coarse classes of ``mapping``; returns the new COCO and what was dropped.

    Raises:
        cocoio.DataError: a category name is missing from ``mapping`` and ``drop_unmapped`` is false.
    """
    names = {c["id"]: c["name"] for c in coco["categories"]}
    unmapped = sorted({name for name in names.values() if name not in mapping})
    if unmapped and not drop_unmapped:
        raise cocoio.DataError(f"categories not in the map: {', '.join(unmapped)} (add them or pass --drop-unmapped)")
    coarse_ids = {name: i for i, name in enumerate(dict.fromkeys(mapping.values()), start=1)}
    annotations = []
    for ann in coco["annotations"]:
        name = names.get(ann["category_id"])
        if name is None:
            raise cocoio.DataError(
                f"annotation {ann['id']} has unknown category_id {ann['category_id']}; run `python -m medtune.data check`"
            )
        if name in mapping:
            annotations.append({**ann, "category_id": coarse_ids[mapping[name]]})
    kept = {ann["image_id"] for ann in annotations}
    annotated_before = {ann["image_id"] for ann in coco["annotations"]}
    images = [img for img in coco["images"] if img["id"] in kept or img["id"] not in annotated_before]
    out = {
        **coco,
        "info": {**coco.get("info", {}), "simplified": {"map": mapping}},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": name} for name, i in coarse_ids.items()],
    }
    dropped = {
        "labels": unmapped,
        "annotations": len(coco["annotations"]) - len(annotations),
        "images": len(coco["images"]) - len(images),
    }
    return out, dropped


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--coco", type=Path, required=True, help="COCO JSON file with the fine categories")
    parser.add_argument(
        "--map", type=Path, required=True, metavar="MAP.yaml", help="YAML mapping fine_name: coarse_name"
    )
    parser.add_argument("--out", type=Path, required=True, help="COCO JSON file to write")
    parser.add_argument(
        "--images", type=Path, help="image folder (default: info.images_dir, images/ beside FILE, FILE's folder)"
    )
    parser.add_argument(
        "--drop-unmapped", action="store_true", help="drop annotations of unmapped categories instead of failing"
    )


def run(args: argparse.Namespace) -> int:
    try:
        mapping = load_map(args.map)
        coco = cocoio.require_keys(args.coco, cocoio.load_coco(args.coco))
        images_dir = cocoio.images_dir_for(args.coco, coco, args.images)
        try:
            out, dropped = simplify_coco(coco, mapping, drop_unmapped=args.drop_unmapped)
        except cocoio.DataError as err:
            raise cocoio.DataError(f"{args.coco}: {err}") from None
        cocoio.write_json_atomic(args.out, cocoio.record_images_dir(out, args.out, images_dir))
    except cocoio.DataError as err:
        return cocoio.fail(err)
    if dropped["labels"]:
        print(
            f"simplify: dropped {dropped['annotations']} annotations of unmapped labels "
            f"({', '.join(dropped['labels'])}) and {dropped['images']} images left without annotations"
        )
    classes = ", ".join(f"{c['id']} {c['name']}" for c in out["categories"])
    print(
        f"simplify: wrote {args.out} ({len(out['images'])} images, {len(out['annotations'])} annotations; classes {classes})"
    )
    return 0
