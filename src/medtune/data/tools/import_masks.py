"""``import-masks``: build a COCO file from an image folder, binary mask PNGs and a labels CSV.

One image entry per CSV row (ids 1..N in CSV order; images in the folder but not in the CSV are
skipped and counted), one annotation per image holding all its lesion polygons, ``area`` = mask
pixel count, ``bbox`` = the mask's. An empty mask gives ``segmentation: []``, area 0 and bbox
[0, 0, 0, 0] ("image without lesion"). Categories: the sorted label names, ids 1..K. A mask pixel
is foreground above half the mask's maximum (0/1, 0/255 and anti-aliased masks all work).

Polygons come from ``cv2.findContours(mask, RETR_EXTERNAL, CHAIN_APPROX_SIMPLE)`` (holes are
filled). With ``--contours edges`` (default) the contours are traced on the mask upsampled 2x and
mapped back, so each polygon runs along the outer pixel edges and pycocotools, which the training
loader uses, rasterises it back to the mask exactly. ``--contours centres`` keeps the raw contours
through the boundary pixels' centres (as BUSI's ``coco_all.json``): pycocotools then loses about
half a pixel all round (mean IoU 0.945 with the masks on BUSI at 256 px), and contours of fewer than
3 points (1-pixel lines) are skipped.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from medtune.data import cocoio
from medtune.data.imageio import image_size

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm"}


def mask_polygons(mask: np.ndarray, *, contours: str = "edges") -> list[list[float]]:
    """Outer polygons of a boolean mask as flat COCO lists (see the module docstring)."""
    import cv2

    scale = 2 if contours == "edges" else 1
    grid = np.kron(mask.astype(np.uint8), np.ones((scale, scale), np.uint8))
    found, _ = cv2.findContours(grid, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in found:
        if len(contour) < 3:
            continue
        xy = contour.reshape(-1, 2).astype(float)
        xy = (xy + 0.5) / 2 if scale == 2 else xy  # sub-pixel centre -> 0.25 px inside the pixel edge
        polygons.append([round(float(v), 2) for v in xy.ravel()])
    return polygons


def read_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Boolean mask from a PNG; errors if unreadable or not ``size`` (width, height)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("L") if img.mode in ("RGB", "RGBA", "P", "LA", "1") else img)
    except FileNotFoundError:
        raise cocoio.DataError(f"{path}: mask file not found") from None
    except Exception as err:  # PIL raises many types for broken files
        raise cocoio.DataError(f"{path}: cannot read mask ({type(err).__name__})") from None
    if arr.shape[:2] != (size[1], size[0]):
        raise cocoio.DataError(f"{path}: mask is {arr.shape[1]}x{arr.shape[0]}, its image is {size[0]}x{size[1]}")
    top = arr.max() if arr.size else 0
    return arr > top / 2 if top > 0 else np.zeros(arr.shape[:2], dtype=bool)


def read_labels(path: Path, *, file_column: str, label_column: str) -> dict[str, str]:
    """``{file name: label}`` from the CSV, in file order; errors name the column or row."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            for column in (file_column, label_column):
                if column not in columns:
                    raise cocoio.DataError(f"{path}: no column '{column}' (columns: {', '.join(columns)})")
            labels: dict[str, str] = {}
            for row_number, row in enumerate(reader, start=2):
                name, label = (row[file_column] or "").strip(), (row[label_column] or "").strip()
                if not name or not label:
                    raise cocoio.DataError(
                        f"{path}: line {row_number} has an empty '{file_column}' or '{label_column}'"
                    )
                if name in labels:
                    raise cocoio.DataError(f"{path}: line {row_number}: '{name}' listed twice")
                labels[name] = label
    except (FileNotFoundError, IsADirectoryError):
        raise cocoio.DataError(f"--labels {path}: file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise cocoio.DataError(f"--labels {path}: cannot read CSV ({err})") from None
    return labels


def import_masks(
    images_dir: Path,
    masks_dir: Path,
    labels_csv: Path,
    *,
    mask_pattern: str = "{stem}.png",
    file_column: str = "file",
    label_column: str = "label",
    contours: str = "edges",
) -> dict:
    """Build the COCO dict (see the module docstring); ``info.skipped`` counts unlisted images."""
    labels = read_labels(labels_csv, file_column=file_column, label_column=label_column)
    category_ids = {name: i for i, name in enumerate(sorted(set(labels.values())), start=1)}
    coco: dict = {
        "info": {"description": f"imported from {masks_dir} and {labels_csv}"},
        "images": [],
        "annotations": [],
    }
    for image_id, (name, label) in enumerate(labels.items(), start=1):
        path = Path(images_dir) / name
        if cocoio.escapes(name) or not path.is_file():
            raise cocoio.DataError(f"{labels_csv}: image '{name}' not found in {images_dir}")
        try:
            mask_name = mask_pattern.format(stem=Path(name).stem, name=name, suffix=Path(name).suffix)
        except (KeyError, IndexError, ValueError) as err:
            raise cocoio.DataError(
                f"--mask-pattern '{mask_pattern}': only {{stem}}, {{name}}, {{suffix}} are known ({err})"
            ) from None
        size = image_size(path)  # upright (EXIF) size; DICOM too
        mask = read_mask(Path(masks_dir) / mask_name, size)
        coco["images"].append({"id": image_id, "file_name": name, "width": size[0], "height": size[1]})
        coco["annotations"].append(_annotation(image_id, category_ids[label], mask, contours))
    coco["categories"] = [{"id": i, "name": name} for name, i in category_ids.items()]
    listed = set(labels)
    coco["info"]["skipped"] = sum(
        1 for p in Path(images_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in listed
    )
    return coco


def _annotation(image_id: int, category_id: int, mask: np.ndarray, contours: str) -> dict:
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return {
            "id": image_id,
            "image_id": image_id,
            "category_id": category_id,
            "segmentation": [],
            "area": 0,
            "bbox": [0, 0, 0, 0],
            "iscrowd": 0,
        }
    bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
    return {
        "id": image_id,
        "image_id": image_id,
        "category_id": category_id,
        "iscrowd": 0,
        "segmentation": mask_polygons(mask, contours=contours),
        "area": int(len(xs)),
        "bbox": bbox,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=Path, required=True, help="image folder")
    parser.add_argument("--masks", type=Path, required=True, help="folder of binary mask PNGs")
    parser.add_argument(
        "--labels", type=Path, required=True, metavar="CSV", help="CSV mapping image file -> label name"
    )
    parser.add_argument("--out", type=Path, required=True, help="COCO JSON file to write")
    parser.add_argument(
        "--mask-pattern",
        default="{stem}.png",
        help="mask file name from {stem}, {name}, {suffix} (default '{stem}.png')",
    )
    parser.add_argument("--file-column", default="file", help="CSV column with the image file name (default 'file')")
    parser.add_argument("--label-column", default="label", help="CSV column with the label name (default 'label')")
    parser.add_argument(
        "--contours", choices=("edges", "centres"), default="edges", help="polygon convention (default edges)"
    )


def run(args: argparse.Namespace) -> int:
    try:
        for flag, folder in (("--images", args.images), ("--masks", args.masks)):
            if not folder.is_dir():
                raise cocoio.DataError(f"{flag} {folder}: no such folder")
        coco = import_masks(
            args.images,
            args.masks,
            args.labels,
            mask_pattern=args.mask_pattern,
            file_column=args.file_column,
            label_column=args.label_column,
            contours=args.contours,
        )
        cocoio.write_json_atomic(args.out, cocoio.record_images_dir(coco, args.out, args.images))
    except cocoio.DataError as err:
        return cocoio.fail(err)
    empty = sum(1 for a in coco["annotations"] if not a["segmentation"])
    classes = ", ".join(f"{c['id']} {c['name']}" for c in coco["categories"])
    print(f"import-masks: wrote {args.out} ({len(coco['images'])} images, {empty} empty masks; classes {classes})")
    if coco["info"]["skipped"]:
        print(
            f"import-masks: {coco['info']['skipped']} images in {args.images} are not in {args.labels} and were skipped"
        )
    return 0
