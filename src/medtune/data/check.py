"""``check``: report every problem in a COCO file and its images; optionally write a cleaned copy.

Kinds of problem (``KINDS``) and what ``--fix`` drops for each: the image entry for file problems,
duplicate ids after the first, duplicate content after the first and images without annotations;
the annotation for reference and polygon problems; the category entry for duplicate category ids.
Annotations of dropped images are dropped, then images left without annotations. An annotation
with segmentation ``[]`` and area 0 means "image without lesion" (BUSI normal images): not a problem.

Images are decoded as training decodes them (``medtune.data.imageio.read_image``: EXIF orientation,
16-bit and DICOM scaling), so sizes are the upright ones and DICOM files are checked like the others.
``check_coco(..., fast=True)`` never opens an image (no size, readability or duplicate checks):
the pre-training path. Exit status: 0 clean, 1 problems found (also with ``--fix``), 2 bad input.

Near duplicates (``medtune.data.duplicates``: perceptual hash within ``--near-threshold`` bits,
confirmed by a thumbnail correlation of at least ``--near-similarity``) are reported as groups
with their ids and file names; in one file they are information, not problems.
``--coco DIR`` with ``train.json``, ``val.json``, ``test.json`` checks each split, then looks for
duplicate groups across them: a group that straddles two splits leaks test images into training,
and is a problem (exit 1).
"""

from __future__ import annotations

import argparse
import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from medtune.data import cocoio, dataset_duplicates, duplicates, masks
from medtune.data.imageio import read_image
from medtune.data.problems import KINDS, Problem, Report, print_report
from medtune.data.tools.fix import fix_coco, removed_path

__all__ = ["KINDS", "CheckReport", "Problem", "Report", "check_coco", "fix_coco", "print_report", "removed_path"]


@dataclass
class CheckReport(Report):
    """A :class:`Report` and the near-duplicate groups too large to trust (``duplicates.Grouping.suspicious``)."""

    suspicious_groups: list[list[dict]] = field(default_factory=list)


def check_coco(
    coco_path: Path,
    images_dir: Path | None = None,
    *,
    fast: bool = False,
    near: duplicates.Setting = duplicates.Setting(),
) -> Report:
    """Check ``coco_path``; raises ``cocoio.DataError`` only if the file itself cannot be read."""
    coco = cocoio.load_coco(coco_path)
    report = CheckReport(Path(coco_path), cocoio.images_dir_for(coco_path, coco, images_dir), coco=coco, near=near)
    known_categories = _check_categories(report)
    images = _check_images(report, fast=fast)
    if not fast:  # missing and unreadable files are skipped here (reported above)
        found = dataset_duplicates.image_grouping(list(images.values()), report.images_dir, near)
        report.near_groups, report.suspicious_groups = found.groups, found.suspicious
    annotated = _check_annotations(report, images, known_categories)
    for i, img in enumerate(coco["images"]):
        if isinstance(img, dict) and _is_id(img.get("id")) and img["id"] in images and img["id"] not in annotated:
            _image_problem(report, i, "image_without_annotation", "no annotation")
    return report


def _check_categories(report: Report) -> set:
    seen: set = set()
    for i, cat in enumerate(report.coco["categories"]):
        if not isinstance(cat, dict) or not _is_id(cat.get("id")) or not isinstance(cat.get("name"), str):
            report.problems.append(
                Problem(
                    "malformed_entry",
                    None,
                    None,
                    f"categories[{i}] needs an integer 'id' and a string 'name'",
                    entry=("categories", i),
                )
            )
        elif cat["id"] in seen:
            report.problems.append(
                Problem(
                    "duplicate_category_id",
                    None,
                    None,
                    f"category id {cat['id']} ('{cat['name']}') used before",
                    entry=("categories", i),
                )
            )
        else:
            seen.add(cat["id"])
    return seen


def _check_images(report: Report, *, fast: bool) -> dict:
    """Check image entries, then their files; returns ``{id: first entry}`` of well-formed images."""
    images: dict = {}
    on_disk: list[int] = []
    for i, img in enumerate(report.coco["images"]):
        name = img.get("file_name") if isinstance(img, dict) else None
        if not isinstance(img, dict) or not _is_id(img.get("id")) or not isinstance(name, str) or not name:
            report.problems.append(
                Problem(
                    "malformed_entry",
                    None,
                    None,
                    f"images[{i}] needs an integer 'id' and a 'file_name'",
                    entry=("images", i),
                )
            )
            continue
        if not (_is_size(img.get("width")) and _is_size(img.get("height"))):
            _image_problem(report, i, "malformed_entry", "'width' and 'height' must be positive integers")
            continue
        if img["id"] in images:
            _image_problem(
                report, i, "duplicate_image_id", f"id {img['id']} used before by {images[img['id']]['file_name']}"
            )
        else:
            images[img["id"]] = img
        escape = cocoio.escapes(name)
        if escape:  # never touch files outside the image folder
            _image_problem(report, i, f"{escape}_file_name", f"'{name}' is outside {report.images_dir}")
        elif not _is_file(report.images_dir / name):
            _image_problem(report, i, "missing_file", f"{report.images_dir / name} not found")
        else:
            on_disk.append(i)
    if not fast:
        _check_files(report, on_disk)
    return images


def _check_files(report: Report, indices: list[int]) -> None:
    """Decode the image files at ``indices``: readability, size and duplicate content."""
    first_by_hash: dict[str, dict] = {}
    groups: dict[str, list[tuple[object, str]]] = defaultdict(list)
    for i in indices:
        img = report.coco["images"][i]
        path = report.images_dir / img["file_name"]
        try:
            digest, (width, height) = pixel_hash(path)
        except cocoio.DataError as err:
            _image_problem(report, i, "unreadable_file", str(err))
            continue
        if (width, height) != (img["width"], img["height"]):
            _image_problem(
                report, i, "size_mismatch", f"file is {width}x{height}, JSON says {img['width']}x{img['height']}"
            )
        groups[digest].append((img["id"], img["file_name"]))
        first = first_by_hash.setdefault(digest, img)
        if first is not img:
            _image_problem(report, i, "duplicate_content", f"same pixels as image {first['id']} ({first['file_name']})")
    report.duplicate_groups = [members for members in groups.values() if len(members) > 1]


def pixel_hash(path: Path) -> tuple[str, tuple[int, int]]:
    """sha256 of the pixels ``imageio.read_image`` gives (upright 8-bit RGB) and their ``(width, height)``.

    So grey and grey-RGB copies, or a PNG and its lossless TIFF, hash alike: the model sees the same input.
    """
    img = read_image(path)
    digest = hashlib.sha256(f"{img.size}".encode())
    digest.update(img.tobytes())
    return digest.hexdigest(), img.size


def _image_problem(report: Report, index: int, kind: str, detail: str) -> None:
    img = report.coco["images"][index]
    report.problems.append(Problem(kind, img["id"], img["file_name"], detail, entry=("images", index)))


def _check_annotations(report: Report, images: dict, categories: set) -> set:
    """Check annotations; returns the ids of images that at least one annotation points at."""
    seen: set = set()
    annotated: set = set()
    for j, ann in enumerate(report.coco["annotations"]):
        if not isinstance(ann, dict) or not all(_is_id(ann.get(k)) for k in ("id", "image_id", "category_id")):
            report.problems.append(
                Problem(
                    "malformed_entry",
                    None,
                    None,
                    f"annotations[{j}] needs integer 'id', 'image_id' and 'category_id'",
                    entry=("annotations", j),
                )
            )
            continue
        img = images.get(ann["image_id"])
        name = img["file_name"] if img else None

        def add(kind: str, detail: str, ann: dict = ann, j: int = j, name: str | None = name) -> None:
            report.problems.append(Problem(kind, ann["image_id"], name, detail, ann["id"], ("annotations", j)))

        if ann["id"] in seen:
            add("duplicate_annotation_id", f"annotation id {ann['id']} used before")
        seen.add(ann["id"])
        annotated.add(ann["image_id"])
        if img is None:
            add("unknown_image", f"image_id {ann['image_id']} not in 'images'")
        if ann["category_id"] not in categories:
            add("unknown_category", f"category_id {ann['category_id']} not in 'categories'")
        for kind, detail in _segmentation_problems(ann, img):
            add(kind, detail)
    return annotated


def _segmentation_problems(ann: dict, img: dict | None) -> list[tuple[str, str]]:
    seg = ann.get("segmentation", [])
    problem = masks.mask_problem(seg, (img["height"], img["width"]) if img else None)  # what pycocotools may see
    if problem is not None:
        return [("malformed_entry", problem)]
    if isinstance(seg, dict):
        return []
    if not seg:
        area = ann.get("area", 0)
        return [] if area == 0 else [("degenerate_polygon", f"empty segmentation but area {area}")]
    found = []
    for k, poly in enumerate(seg):
        if len(poly) < 6 or len(poly) % 2:
            found.append(("degenerate_polygon", f"polygon {k} has {len(poly)} coordinates (needs an even count >= 6)"))
        elif masks.polygon_area(poly) == 0:
            found.append(("degenerate_polygon", f"polygon {k} has zero area"))
        elif img is not None:
            xs, ys = poly[0::2], poly[1::2]
            if min(xs) < 0 or min(ys) < 0 or max(xs) > img["width"] or max(ys) > img["height"]:
                found.append(
                    (
                        "polygon_outside",
                        f"polygon {k} spans x {min(xs)}..{max(xs)}, y {min(ys)}..{max(ys)}; image is {img['width']}x{img['height']}",
                    )
                )
    return list(dict.fromkeys(found))


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # name too long, embedded NUL byte
        return False


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_size(value: object) -> bool:
    return _is_id(value) and value > 0


def check_split_folder(folder: Path, images_dir: Path | None, *, near: duplicates.Setting, max_report: int = 20) -> int:
    """Check each split of ``folder``, then duplicate groups across splits; returns the exit status."""
    files = {s: Path(folder) / f"{s}.json" for s in ("train", "val", "test")}
    if not all(path.is_file() for path in files.values()):
        raise cocoio.DataError(
            f"--coco {folder}: a folder must hold train.json, val.json and test.json (as `split` writes)"
        )
    reports = {s: check_coco(path, images_dir, near=near) for s, path in files.items()}
    for report in reports.values():
        print_report(report, max_report=max_report)
    found = dataset_duplicates.split_grouping(files, {s: r.images_dir for s, r in reports.items()}, near)
    groups, across = found.groups, dataset_duplicates.straddling(found.groups)
    n_images = sum(len(r.coco["images"]) for r in reports.values())
    for line in dataset_duplicates.suspicious_lines(found.suspicious, n_images, max_report=max_report):
        print(line)
    print(f"across splits: {len(groups)} duplicate group(s), {len(across)} straddling two or more splits")
    for line in dataset_duplicates.group_lines(across, label="straddling_duplicates", max_report=max_report):
        print(line)
    if across:
        print(f"  keep each group in one split: `python -m medtune.data split` does by default ({near.label})")
    return 0 if all(r.ok for r in reports.values()) and not across else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--coco", type=Path, required=True, help="COCO JSON file, or a folder with train/val/test.json")
    parser.add_argument(
        "--images", type=Path, help="image folder (default: info.images_dir, images/ beside FILE, FILE's folder)"
    )
    parser.add_argument(
        "--fix", type=Path, metavar="OUT", help="write a cleaned copy to OUT and the removals to OUT.removed.json"
    )
    parser.add_argument(
        "--max-report", type=int, default=20, metavar="N", help="problem lines printed per kind (0: all; default 20)"
    )
    dataset_duplicates.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        if args.fix is not None and args.fix.resolve() == args.coco.resolve():
            raise cocoio.DataError(f"--fix {args.fix}: must differ from --coco (the input is kept)")
        near = dataset_duplicates.setting_from_args(args)
        if args.coco.is_dir():
            return check_split_folder(args.coco, args.images, near=near, max_report=args.max_report)
        report = check_coco(args.coco, args.images, near=near)
        print_report(report, max_report=args.max_report)
        n_images = len(report.coco["images"])
        for line in dataset_duplicates.suspicious_lines(report.suspicious_groups, n_images, max_report=args.max_report):
            print(line)
        if args.fix is not None:
            removed = fix_coco(report, args.fix)
            sizes = ", ".join(f"{len(v)} {k}" for k, v in removed.items())
            print(f"fix: wrote {args.fix}; removed {sizes} (listed in {removed_path(args.fix)})")
    except cocoio.DataError as err:
        return cocoio.fail(err)
    return 0 if report.ok else 1
