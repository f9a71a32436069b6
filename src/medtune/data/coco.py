"""Resolve a dataset given by ``--data`` and read its COCO splits.

A dataset is either a folder holding ``train.json``, ``val.json`` and ``test.json`` (images in
``images/`` next to them, or in the folder itself), or a single COCO file that is split once,
deterministically, into train/val/test (stratified by class). ``file_name`` entries are relative to
the images folder. A split may name its image folder explicitly in ``info.images_dir`` (written by
``python -m medtune.data split``).

The dataset fingerprint and the training caches' keys cover the images' bytes, not only the COCO files:
each split's content digest is a sha256 over its COCO file's bytes and, in the file's image order,
each referenced image's name and sha256 (a missing or unreadable file, or one outside the image
folder, counts as its name and a marker; ``check`` reports those). Replacing an image file therefore
changes the fingerprint and the cache files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medtune.data.cocoio import DataError, escapes, images_dir_for, load_coco
from medtune.data.masks import mask_problem

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Dataset:
    """A resolved dataset: where each split's COCO file and images are, and its classes."""

    name: str
    root: Path
    coco_files: dict[str, Path]
    images_dirs: dict[str, Path]
    categories: list[str]
    category_ids: list[int]
    fingerprint: str
    content_digests: dict[str, str]  # per split: sha256 of its COCO file and its images' bytes

    @property
    def num_classes(self) -> int:
        return len(self.categories)


@dataclass
class Records:
    """One split's images as parallel lists: absolute paths, label sets and mask polygons."""

    image_ids: list[int]
    paths: list[Path]
    labels: list[list[int]]  # class indices (0..K-1) present in the image, sorted
    segmentations: list[list]  # per image: list of COCO segmentations (polygons or RLE)
    sizes: list[tuple[int, int]]  # (height, width) from the JSON
    annotation_ids: list[list[int]] = field(default_factory=list)  # per image: the ids of its segmentations


def _fingerprint(digests: dict[str, str]) -> str:
    """The dataset's fingerprint: one hash over every split's :func:`_content_digest`."""
    digest = hashlib.sha256()
    for split in SPLITS:
        digest.update(f"{split}:{digests[split]}|".encode())
    return digest.hexdigest()[:12]


def _content_digest(coco_file: Path, coco: dict, images_dir: Path) -> str:
    """sha256 over the COCO file's bytes, then each image entry's file name and file sha256, in order."""
    digest = hashlib.sha256(coco_file.read_bytes())
    for img in coco["images"]:
        name = img.get("file_name") if isinstance(img, dict) else None
        digest.update(f"\0{name}\0".encode())
        digest.update(_file_digest(images_dir, name))
    return digest.hexdigest()


def _file_digest(images_dir: Path, name: object) -> bytes:
    """sha256 of the image file ``name`` under ``images_dir``; a marker when it cannot be read there."""
    if not isinstance(name, str) or escapes(name):
        return b"outside"  # never open files outside the image folder
    try:
        with open(images_dir / name, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").digest()
    except (OSError, ValueError):  # missing, a folder, a name with a NUL byte
        return b"unreadable"


def resolve_dataset(data: Path, *, cache_root: Path, seed: int = 0) -> Dataset:
    """Resolve ``--data`` to a :class:`Dataset` with absolute paths.

    A single COCO file is split once (70/15/15, stratified, ``seed``) into ``cache_root/splits``.
    """
    data = Path(data).expanduser().resolve()
    if not data.exists():
        raise DataError(f"--data {data}: no such file or folder")
    if data.is_file():
        data = _split_single_file(data, cache_root=cache_root, seed=seed)
    files = {split: data / f"{split}.json" for split in SPLITS}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise DataError(f"--data {data}: missing {', '.join(missing)} (expected train/val/test COCO files)")
    contents = {split: load_coco(path) for split, path in files.items()}
    for split, content in contents.items():
        for i, cat in enumerate(content["categories"]):
            ok = isinstance(cat, dict) and type(cat.get("id")) is int and isinstance(cat.get("name"), str)
            if not ok:
                raise DataError(f"{files[split]}: categories[{i}] needs an integer 'id' and a string 'name'")
    categories = sorted(contents["train"]["categories"], key=lambda c: c["id"])
    for split in ("val", "test"):
        other = sorted(contents[split]["categories"], key=lambda c: c["id"])
        if [(c["id"], c["name"]) for c in other] != [(c["id"], c["name"]) for c in categories]:
            raise DataError(f"{files[split]}: 'categories' differ from {files['train']}")
    for split, content in contents.items():
        if not content["images"]:
            raise DataError(f"{files[split]}: 'images' is empty (every split needs images)")
    images_dirs = {split: images_dir_for(files[split], contents[split]) for split in SPLITS}
    digests = {split: _content_digest(files[split], contents[split], images_dirs[split]) for split in SPLITS}
    return Dataset(
        name=data.name,
        root=data,
        coco_files=files,
        images_dirs=images_dirs,
        categories=[c["name"] for c in categories],
        category_ids=[c["id"] for c in categories],
        fingerprint=_fingerprint(digests),
        content_digests=digests,
    )


def _split_single_file(path: Path, *, cache_root: Path, seed: int) -> Path:
    from medtune.data.duplicates import Setting
    from medtune.data.split import split_coco

    near = Setting()  # duplicate groups stay in one split; a new setting must not reuse an old split
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    out = cache_root / "splits" / f"{path.stem}-{digest}-s{seed}-{near.key}"
    if not (out / "test.json").is_file():
        split_coco(
            path, out, val=0.15, test=0.15, seed=seed, images_dir=images_dir_for(path, load_coco(path)), near=near
        )
    return out


def load_records(dataset: Dataset, split: str) -> Records:
    """Read one split's images, label sets and segmentations, validating references and segmentations.

    A segmentation pycocotools must not see (``masks.mask_problem``, against the JSON's height and
    width) raises :class:`DataError` naming the file and annotation, before any mask is decoded.
    """
    path = dataset.coco_files[split]
    data = load_coco(path)
    index_of = {cid: i for i, cid in enumerate(dataset.category_ids)}
    images_dir = dataset.images_dirs[split]
    by_image: dict[int, list[dict]] = {}
    image_ids = {img.get("id") for img in data["images"]}
    for ann in data["annotations"]:
        if ann.get("image_id") not in image_ids:
            raise DataError(f"{path}: annotation {ann.get('id')} points at unknown image_id {ann.get('image_id')}")
        if ann.get("category_id") not in index_of:
            raise DataError(f"{path}: annotation {ann.get('id')} has unknown category_id {ann.get('category_id')}")
        by_image.setdefault(ann["image_id"], []).append(ann)
    records = Records([], [], [], [], [])
    for img in data["images"]:
        records.image_ids.append(img["id"])
        records.paths.append(_image_path(path, images_dir, img))
        anns = by_image.get(img["id"], [])
        records.labels.append(sorted({index_of[a["category_id"]] for a in anns}))
        masked = [a for a in anns if a.get("segmentation")]
        size = (int(img["height"]), int(img["width"]))
        for ann in masked:
            problem = mask_problem(ann["segmentation"], size)
            if problem is not None:
                raise DataError(f"{path}: annotation {ann.get('id')} (image {img['id']}): {problem}")
        records.segmentations.append([a["segmentation"] for a in masked])
        records.annotation_ids.append([a.get("id") for a in masked])
        records.sizes.append(size)
    return records


def _image_path(coco_path: Path, images_dir: Path, img: dict) -> Path:
    name = str(img.get("file_name", ""))
    candidate = (images_dir / name).resolve()
    if Path(name).is_absolute() or ".." in Path(name).parts or images_dir not in candidate.parents:
        raise DataError(f"{coco_path}: image {img.get('id')} file_name '{name}' escapes the image folder {images_dir}")
    return candidate


def single_labels(records: Records, path: Path) -> np.ndarray:
    """Image-level class index per image for single-label tasks; errors name the offending image."""
    out = np.empty(len(records.labels), dtype=np.int64)
    for i, labels in enumerate(records.labels):
        if len(labels) != 1:
            what = "no annotation" if not labels else f"{len(labels)} different categories"
            raise DataError(f"{path}: image {records.image_ids[i]} has {what}; single-label tasks need exactly one")
        out[i] = labels[0]
    return out
