"""Near duplicates as the dataset tools see them: their flags, the detector run over COCO files, report lines.

``medtune.data.duplicates`` holds the detector (fingerprints, pairs, coherent groups, the setting).
This module is what ``check``, ``split``, ``stats``, the folds and the published dataset summary
use around it: the ``--near-*`` flags that make a :class:`~medtune.data.duplicates.Setting`; the
detector over one COCO file's images (:func:`image_grouping`) or over several split files at once
(:func:`split_grouping`, entries tagged with their split), its groups returned as the COCO entries
themselves; and the lines the tools print about them (:func:`group_lines`, :func:`suspicious_lines`).

No torch here: the dataset tools must start fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medtune.data import cocoio
from medtune.data.duplicates import (
    DEFAULT_SIMILARITY,
    DEFAULT_THRESHOLD,
    HASH_BITS,
    MAX_GROUP,
    MAX_SHARE,
    Fingerprint,
    Grouping,
    Setting,
    file_fingerprint,
    group_bound,
    near_grouping,
)


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
    parser.add_argument(
        "--accept-groups",
        action="store_true",
        help=f"near duplicates: let groups of more than {MAX_GROUP} images (or {MAX_SHARE * 100:.0f}%% of the dataset) "
        "constrain splits and folds; by default they are reported as suspicious and not used",
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
    return Setting(check_threshold(args.near_threshold), similarity, bool(getattr(args, "accept_groups", False)))


def check_threshold(value: object) -> int:
    """``value`` (an int or the flag's text) as a Hamming distance; raises ``DataError`` naming the flag."""
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or not 0 <= int(text) < HASH_BITS:
        raise cocoio.DataError(
            f"--near-threshold {value}: expected an integer number of bits from 0 to {HASH_BITS - 1}"
        )
    return int(text)


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


def image_grouping(images: list[dict], images_dir: Path, setting: Setting) -> Grouping:
    """:func:`duplicates.near_grouping` of COCO image entries (their files under ``images_dir``), as entries."""
    prints, unreadable = fingerprint_images(images, images_dir)
    entry = {img["id"]: img for img in images}
    found = near_grouping(prints, setting)
    return Grouping(*([[entry[i] for i in g] for g in groups] for groups in found[:2]), unreadable)


def image_groups(images: list[dict], images_dir: Path, setting: Setting) -> tuple[list[list[dict]], list[str]]:
    """Trusted near-duplicate groups of COCO image entries, and unreadable files (:func:`image_grouping`)."""
    found = image_grouping(images, images_dir, setting)
    return found.groups, found.unreadable


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


def split_grouping(files: dict[str, Path], images_dirs: dict[str, Path], setting: Setting) -> Grouping:
    """:func:`duplicates.near_grouping` over the images of several split files, each entry tagged with ``split``.

    ``files`` maps split name to COCO file; unreadable entries are skipped (``check`` reports them).
    Entry ids become ``"<split>:<id>"``.
    """
    prints, entries, unreadable = {}, {}, []
    for split, path in files.items():
        images = [
            img
            for img in cocoio.load_coco(path)["images"]
            if isinstance(img, dict) and isinstance(img.get("file_name"), str) and "id" in img
        ]
        found, missed = fingerprint_images(images, images_dirs[split])
        unreadable += missed
        for img in images:
            if img.get("id") in found:
                prints[(split, img["id"])] = found[img["id"]]
                entries[(split, img["id"])] = {**img, "id": f"{split}:{img['id']}", "split": split}
    grouped = near_grouping(prints, setting)
    return Grouping(*([[entries[k] for k in g] for g in groups] for groups in grouped[:2]), unreadable)


def split_groups(files: dict[str, Path], images_dirs: dict[str, Path], setting: Setting) -> list[list[dict]]:
    """Trusted near-duplicate groups over several split files (:func:`split_grouping`)."""
    return split_grouping(files, images_dirs, setting).groups


def suspicious_lines(groups: list[list[dict]], n_images: int, *, max_report: int = 20) -> list[str]:
    """One line per suspicious group (at most ``max_report``; 0: all): its size and a few file names."""
    shown = groups if max_report <= 0 else groups[:max_report]
    lines = [
        f"suspicious near-duplicate group of {len(g)} images (over {group_bound(n_images)} of {n_images}; "
        f"not used for splits or folds, --accept-groups uses it): "
        + ", ".join(img["file_name"] for img in g[:3])
        + (", ..." if len(g) > 3 else "")
        for g in shown
    ]
    if len(groups) > len(shown):
        lines.append(f"  ... and {len(groups) - len(shown)} more suspicious groups")
    return lines


def straddling(groups: list[list[dict]]) -> list[list[dict]]:
    """The groups of :func:`split_groups` whose images lie in more than one split."""
    return [group for group in groups if len({img["split"] for img in group}) > 1]
