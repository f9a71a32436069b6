"""Near-duplicate images: a perceptual hash per image, pairs under a distance, groups by union-find.

Each image gets a 128-bit hash: its 64-bit pHash (the signs of the low DCT frequencies of a
32 x 32 grey thumbnail) and its 64-bit dHash (the signs of horizontal gradients of a 9 x 8
thumbnail) side by side. Two images are near duplicates when the Hamming distance of their hashes
is at most ``threshold``; groups are the connected components of that relation (union-find), so a
copy of a copy joins its original. The two hashes fail differently (pHash on crops, dHash on
contrast), so their sum separates transformed copies from look-alike ultrasound images better than
either alone: ``benchmarks/near_duplicates.py`` measures it and ``DEFAULT_THRESHOLD`` comes from it.

No torch here: the dataset tools must start fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Hashable, Iterable
from pathlib import Path

import numpy as np

from medtune.data import cocoio

HASH_BITS = 128  # 64 pHash bits + 64 dHash bits
# Tuned on benchmarks/near_duplicates.py over BUSI (see BENCHMARKS.md): recall of planted copies
# >= 0.95 while distinct ultrasound images almost never come this close.
DEFAULT_THRESHOLD = 32


def add_arguments(parser: argparse.ArgumentParser, *, off_flag: str | None = None, off_help: str = "") -> None:
    """The threshold flag (and optionally an opt-out flag) shared by ``check``, ``split`` and ``stats``."""
    parser.add_argument(
        "--near-threshold",
        default=str(DEFAULT_THRESHOLD),
        metavar="BITS",
        help=f"near duplicates: hash distance in bits, 0-{HASH_BITS - 1} (default {DEFAULT_THRESHOLD}; 0: exact copies only)",
    )
    if off_flag:
        parser.add_argument(off_flag, action="store_true", help=off_help)


def check_threshold(value: object) -> int:
    """``value`` (an int or the flag's text) as a Hamming distance; raises ``DataError`` naming the flag."""
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or not 0 <= int(text) < HASH_BITS:
        raise cocoio.DataError(
            f"--near-threshold {value}: expected an integer number of bits from 0 to {HASH_BITS - 1}"
        )
    return int(text)


def image_hash(image: object) -> np.ndarray:
    """The 128-bit hash of a PIL image as 16 bytes (``uint8``); colour is ignored."""
    import imagehash

    grey = image.convert("L")
    bits = np.concatenate([imagehash.phash(grey).hash.ravel(), imagehash.dhash(grey).hash.ravel()])
    return np.packbits(bits)


def file_hash(path: Path) -> np.ndarray:
    """:func:`image_hash` of the image file at ``path``; raises ``OSError``/``ValueError`` if unreadable."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        return image_hash(img)


def near_pairs(hashes: np.ndarray, threshold: int) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, of rows of ``hashes`` (n x 16 bytes) within ``threshold`` bits."""
    hashes = np.asarray(hashes, dtype=np.uint8)
    pairs = []
    for i in range(len(hashes) - 1):  # one row at a time: memory stays O(n) for large sets
        distance = np.bitwise_count(hashes[i + 1 :] ^ hashes[i]).sum(axis=1)
        pairs += [(i, i + 1 + int(j)) for j in np.flatnonzero(distance <= threshold)]
    return pairs


def union_groups(keys: list[Hashable], pairs: Iterable[tuple[int, int]]) -> list[list[Hashable]]:
    """Connected components (of two or more) of ``pairs`` of indices into ``keys``, in ``keys`` order."""
    parent = list(range(len(keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving keeps the trees flat
            i = parent[i]
        return i

    for i, j in pairs:
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[int, list[Hashable]] = {}
    for i, key in enumerate(keys):
        members.setdefault(root(i), []).append(key)
    return [group for group in members.values() if len(group) > 1]


def near_groups(hashes: dict[Hashable, np.ndarray], threshold: int) -> list[list[Hashable]]:
    """Groups of keys of ``hashes`` whose images are near duplicates (transitively)."""
    keys = list(hashes)
    if not keys:
        return []
    return union_groups(keys, near_pairs(np.stack([hashes[k] for k in keys]), check_threshold(threshold)))


def hash_images(images: list[dict], images_dir: Path) -> tuple[dict[object, np.ndarray], list[str]]:
    """Hash the file of each COCO image entry; returns hashes by image id and the unreadable file names."""
    hashes, unreadable = {}, []
    for img in images:
        try:
            if cocoio.escapes(img["file_name"]):
                raise ValueError("outside the image folder")  # never open files outside it
            hashes[img["id"]] = file_hash(Path(images_dir) / img["file_name"])
        except Exception:  # noqa: BLE001 - PIL raises many types; check names the cause
            unreadable.append(img["file_name"])
    return hashes, unreadable


def image_groups(images: list[dict], images_dir: Path, threshold: int) -> tuple[list[list[dict]], list[str]]:
    """Near-duplicate groups of COCO image entries (their files under ``images_dir``), and unreadable files."""
    hashes, unreadable = hash_images(images, images_dir)
    entry = {img["id"]: img for img in images}
    return [[entry[i] for i in group] for group in near_groups(hashes, threshold)], unreadable


def describe(group: list[dict]) -> str:
    """One line naming every image of a group: ``id 3 (a.png), id 9 (b.png)``."""
    return ", ".join(f"id {img['id']} ({img['file_name']})" for img in group)


def group_lines(groups: list[list[dict]], *, label: str, max_report: int = 20) -> list[str]:
    """A summary line and one line per group (at most ``max_report``; 0: all) for the tools' reports."""
    if not groups:
        return []
    lines = [f"{label}: {len(groups)} group(s), {sum(map(len, groups))} images"]
    shown = groups if max_report <= 0 else groups[:max_report]
    lines += [f"  group of {len(g)}: {describe(g)}" for g in shown]
    if len(groups) > len(shown):
        lines.append(f"  ... and {len(groups) - len(shown)} more groups")
    return lines


def split_groups(files: dict[str, Path], images_dirs: dict[str, Path], threshold: int) -> list[list[dict]]:
    """Near-duplicate groups over the images of several split files, each entry tagged with ``split``.

    ``files`` maps split name to COCO file; unreadable entries are skipped (``check`` reports them).
    """
    hashes, entries = {}, {}
    for split, path in files.items():
        images = [
            img
            for img in cocoio.load_coco(path)["images"]
            if isinstance(img, dict) and isinstance(img.get("file_name"), str) and "id" in img
        ]
        found, _ = hash_images(images, images_dirs[split])
        for img in images:
            if img.get("id") in found:
                hashes[(split, img["id"])] = found[img["id"]]
                entries[(split, img["id"])] = {**img, "id": f"{split}:{img['id']}", "split": split}
    return [[entries[key] for key in group] for group in near_groups(hashes, threshold)]


def straddling(groups: list[list[dict]]) -> list[list[dict]]:
    """The groups of :func:`split_groups` whose images lie in more than one split."""
    return [group for group in groups if len({img["split"] for img in group}) > 1]
