"""What ``check`` finds: the kinds of problem, one problem, the report of one COCO file, its printout.

``check`` fills a :class:`Report`; ``--fix`` (``medtune.data.tools.fix``) and the pre-training check
read it. Near-duplicate groups are part of the report but not problems (``medtune.data.duplicates``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from medtune.data import dataset_duplicates, duplicates

KINDS: dict[str, str] = {
    "malformed_entry": "entry missing a key or with a wrong type, or a mask pycocotools cannot decode",
    "missing_file": "image file not found",
    "unreadable_file": "image file cannot be decoded",
    "size_mismatch": "image size differs from the JSON width/height",
    "escaping_file_name": "file_name leaves the image folder with '..'",
    "absolute_file_name": "file_name is an absolute path",
    "duplicate_image_id": "image id used more than once",
    "duplicate_annotation_id": "annotation id used more than once",
    "duplicate_category_id": "category id used more than once",
    "unknown_image": "annotation points at an image id that does not exist",
    "unknown_category": "annotation points at a category id that does not exist",
    "degenerate_polygon": "polygon with fewer than 3 points or zero area",
    "polygon_outside": "polygon (partly) outside the image",
    "image_without_annotation": "image that no annotation points at",
    "duplicate_content": "same pixels as an earlier image",
}


@dataclass(frozen=True)
class Problem:
    """One problem; ``entry`` is the JSON list and index it is about, used by ``--fix``."""

    kind: str
    image_id: object
    file_name: str | None
    detail: str
    annotation_id: object = None
    entry: tuple[str, int] | None = None

    def line(self) -> str:
        where = f"image {self.image_id}" if self.image_id is not None else ""
        where += f" ({self.file_name})" if self.file_name else ""
        if self.annotation_id is not None:
            where += f" annotation {self.annotation_id}"
        return f"{self.kind}: {where.strip() or '-'}: {self.detail}"


@dataclass
class Report:
    """Everything ``check`` found in one COCO file."""

    coco_path: Path
    images_dir: Path
    problems: list[Problem] = field(default_factory=list)
    duplicate_groups: list[list[tuple[object, str]]] = field(default_factory=list)  # (id, file_name)
    near_groups: list[list[dict]] = field(default_factory=list)  # image entries; exact copies included
    near: duplicates.Setting = duplicates.Setting()
    coco: dict = field(default_factory=dict, repr=False)

    def counts(self) -> dict[str, int]:
        """Number of problems per kind, in ``KINDS`` order, kinds with none left out."""
        found = Counter(p.kind for p in self.problems)
        return {kind: found[kind] for kind in KINDS if found[kind]}

    @property
    def ok(self) -> bool:
        return not self.problems


def print_report(report: Report, *, max_report: int = 20) -> None:
    """Problem lines (at most ``max_report`` per kind), then counts per kind and duplicate groups."""
    coco = report.coco
    print(
        f"check: {report.coco_path} ({len(coco['images'])} images, {len(coco['annotations'])} annotations, images in {report.images_dir})"
    )
    by_kind: dict[str, list[Problem]] = defaultdict(list)
    for p in report.problems:
        by_kind[p.kind].append(p)
    for kind in KINDS:
        shown = by_kind[kind] if max_report <= 0 else by_kind[kind][:max_report]
        for p in shown:
            print(f"  {p.line()}")
        if len(by_kind[kind]) > len(shown):
            print(f"  {kind}: ... and {len(by_kind[kind]) - len(shown)} more")
    for line in dataset_duplicates.group_lines(
        report.near_groups, label=f"near duplicates ({report.near.label})", max_report=max_report
    ):
        print(line)
    if report.ok:
        print("no problems found")
        return
    print("problems per kind:")
    for kind, n in report.counts().items():
        print(f"  {kind:<26}{n:>6}  {KINDS[kind]}")
    if report.duplicate_groups:
        sizes = Counter(len(g) for g in report.duplicate_groups)
        shapes = ", ".join(f"{n} x {k} images" for k, n in sorted(sizes.items()))
        print(f"duplicate content: {len(report.duplicate_groups)} group(s): {shapes}")
