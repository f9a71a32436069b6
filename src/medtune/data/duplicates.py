"""Near-duplicate images: a perceptual hash proposes pairs, a thumbnail correlation confirms them.

Each image gets a fingerprint: a 128-bit hash (its 64-bit pHash, the signs of the low DCT
frequencies of a 32 x 32 grey thumbnail, and its 64-bit dHash, the signs of horizontal gradients of
a 9 x 8 thumbnail) and a 32 x 32 grey thumbnail. Pairs whose hashes differ in at most ``threshold``
bits are *candidates*; a candidate is confirmed when the zero-mean normalised cross-correlation of
the two thumbnails, under the best crop, shift and small rotation of either one
(``medtune.data.similarity``), reaches ``min_similarity``. Groups are the connected components of
the confirmed pairs (union-find), so a copy of a copy joins its original.

Why two stages: a 128-bit hash cannot tell a transformed copy from a look-alike image of the same
layout (every dermoscopy image is a centred lesion on skin), and union-find chains the false pairs
into one giant group; the correlation sees the details (hairs, speckle, markers) the hash drops.
``benchmarks/near_duplicates.py`` measures both stages on BUSI and the synthetic set, and the
defaults come from it (BENCHMARKS.md).

No torch here: the dataset tools must start fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from medtune.data import cocoio
from medtune.data.imageio import read_image
from medtune.data.similarity import pair_similarity, thumbnail

HASH_BITS = 128  # 64 pHash bits + 64 dHash bits
# Tuned on benchmarks/near_duplicates.py over BUSI and the synthetic set (BENCHMARKS.md): at 36 bits
# the hash proposes >= 99% of planted copies; 0.94 keeps >= 97% of them on both sets while
# union-find groups <= 0.23% of distinct pairs (a hash alone at 32 bits grouped 59-85% of the
# synthetic set's). 0.92 let look-alike pairs chain (6.7% on 780 synthetic images); 0.96 loses BUSI copies.
DEFAULT_THRESHOLD = 36
DEFAULT_SIMILARITY = 0.94


class Fingerprint(NamedTuple):
    """What the detector keeps of one image: its 128-bit hash (16 bytes) and grey thumbnail."""

    bits: np.ndarray
    thumb: np.ndarray


@dataclass(frozen=True)
class Setting:
    """How near two images must be: hash ``threshold`` in bits, then ``min_similarity`` of thumbnails.

    ``threshold`` 0 with ``min_similarity`` 1 keeps only images with equal hashes and thumbnails
    (exact copies); ``min_similarity`` 0 confirms every candidate that is not anti-correlated (close to
    a hash alone).
    """

    threshold: int = DEFAULT_THRESHOLD
    min_similarity: float = DEFAULT_SIMILARITY

    @property
    def label(self) -> str:
        """The setting in the tools' reports: ``<= 36 bits, similarity >= 0.92``."""
        return f"<= {self.threshold} bits, similarity >= {self.min_similarity:g}"

    @property
    def key(self) -> str:
        """The setting in cache folder names: ``b36-s0.92``."""
        return f"b{self.threshold}-s{self.min_similarity:g}"


def add_arguments(parser: argparse.ArgumentParser, *, off_flag: str | None = None, off_help: str = "") -> None:
    """The setting's flags (and optionally an opt-out flag) shared by ``check``, ``split`` and ``stats``."""
    parser.add_argument(
        "--near-threshold",
        default=str(DEFAULT_THRESHOLD),
        metavar="BITS",
        help=f"near duplicates: hash distance in bits that proposes a pair, 0-{HASH_BITS - 1} (default {DEFAULT_THRESHOLD})",
    )
    parser.add_argument(
        "--near-similarity",
        default=str(DEFAULT_SIMILARITY),
        metavar="R",
        help=f"near duplicates: thumbnail correlation that confirms a proposed pair, 0-1 (default {DEFAULT_SIMILARITY})",
    )
    if off_flag:
        parser.add_argument(off_flag, action="store_true", help=off_help)


def setting_from_args(args: argparse.Namespace) -> Setting:
    """The :class:`Setting` of the flags of :func:`add_arguments`; raises ``DataError`` naming a bad flag."""
    text = str(args.near_similarity).strip()
    try:
        similarity = float(text)
    except ValueError:
        similarity = float("nan")
    if not 0 <= similarity <= 1:  # also rejects nan
        raise cocoio.DataError(f"--near-similarity {text}: expected a correlation from 0 to 1")
    return Setting(check_threshold(args.near_threshold), similarity)


def check_threshold(value: object) -> int:
    """``value`` (an int or the flag's text) as a Hamming distance; raises ``DataError`` naming the flag."""
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or not 0 <= int(text) < HASH_BITS:
        raise cocoio.DataError(
            f"--near-threshold {value}: expected an integer number of bits from 0 to {HASH_BITS - 1}"
        )
    return int(text)


def image_fingerprint(image: object) -> Fingerprint:
    """The :class:`Fingerprint` of a PIL image; colour is ignored."""
    import imagehash

    grey = image.convert("L")
    bits = np.concatenate([imagehash.phash(grey).hash.ravel(), imagehash.dhash(grey).hash.ravel()])
    return Fingerprint(np.packbits(bits), thumbnail(grey))


def file_fingerprint(path: Path) -> Fingerprint:
    """:func:`image_fingerprint` of the file as ``imageio.read_image`` decodes it; raises ``DataError`` if unreadable."""
    return image_fingerprint(read_image(path))


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


def confirmed_pairs(prints: list[Fingerprint], setting: Setting) -> list[tuple[int, int]]:
    """Index pairs of ``prints`` that the hash proposes and the thumbnail correlation confirms."""
    if not prints:
        return []
    candidates = near_pairs(np.stack([p.bits for p in prints]), setting.threshold)
    similarity = pair_similarity(np.stack([p.thumb for p in prints]), candidates)
    return [pair for pair, s in zip(candidates, similarity) if s >= setting.min_similarity]


def near_groups(prints: dict[Hashable, Fingerprint], setting: Setting) -> list[list[Hashable]]:
    """Groups of keys of ``prints`` whose images are near duplicates (transitively)."""
    keys = list(prints)
    return union_groups(keys, confirmed_pairs([prints[k] for k in keys], setting))


def fingerprint_images(images: list[dict], images_dir: Path) -> tuple[dict[object, Fingerprint], list[str]]:
    """Fingerprint the file of each COCO image entry; returns them by image id, and unreadable file names."""
    prints, unreadable = {}, []
    for img in images:
        try:
            if cocoio.escapes(img["file_name"]):
                raise ValueError("outside the image folder")  # never open files outside it
            prints[img["id"]] = file_fingerprint(Path(images_dir) / img["file_name"])
        except Exception:  # noqa: BLE001 - PIL raises many types; check names the cause
            unreadable.append(img["file_name"])
    return prints, unreadable


def image_groups(images: list[dict], images_dir: Path, setting: Setting) -> tuple[list[list[dict]], list[str]]:
    """Near-duplicate groups of COCO image entries (their files under ``images_dir``), and unreadable files."""
    prints, unreadable = fingerprint_images(images, images_dir)
    entry = {img["id"]: img for img in images}
    return [[entry[i] for i in group] for group in near_groups(prints, setting)], unreadable


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


def split_groups(files: dict[str, Path], images_dirs: dict[str, Path], setting: Setting) -> list[list[dict]]:
    """Near-duplicate groups over the images of several split files, each entry tagged with ``split``.

    ``files`` maps split name to COCO file; unreadable entries are skipped (``check`` reports them).
    """
    prints, entries = {}, {}
    for split, path in files.items():
        images = [
            img
            for img in cocoio.load_coco(path)["images"]
            if isinstance(img, dict) and isinstance(img.get("file_name"), str) and "id" in img
        ]
        found, _ = fingerprint_images(images, images_dirs[split])
        for img in images:
            if img.get("id") in found:
                prints[(split, img["id"])] = found[img["id"]]
                entries[(split, img["id"])] = {**img, "id": f"{split}:{img['id']}", "split": split}
    return [[entries[key] for key in group] for group in near_groups(prints, setting)]


def straddling(groups: list[list[dict]]) -> list[list[dict]]:
    """The groups of :func:`split_groups` whose images lie in more than one split."""
    return [group for group in groups if len({img["split"] for img in group}) > 1]
