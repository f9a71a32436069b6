"""How often a classifier's test predictions follow a known shortcut in the images, not the lesion.

A dataset may record, on each image entry, the class that a spurious cue in the image names: the
synthetic set's corner marker (``marker_class``, a category id, written by
``medtune.data.tools.synth``). The *shortcut share* of a model is the share of test images whose
predicted class is the one the cue names. Where the cue is independent of the class on the test
split (synth's default: the marker names the true class on a third of the test images), a model that
reads only the lesion follows the cue about as often as the cue names the true class (about 1 in
K classes), while a model that reads the cue follows it on up to every image. ``analyze.py
--compare`` prints one line per experiment when the dataset records the cue, with a 95% two-level
bootstrap interval over the test images and the seeds (``medtune.scoring.bootstrap``, the same as
the comparison's table); each line after the first also gives the paired difference from the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medtune.data.cocoio import DataError, load_coco
from medtune.report.compare import Entry
from medtune.scoring.bootstrap import RESAMPLES, SEED, Interval, accuracy, seed_bootstrap

CUE_KEY = "marker_class"  # the image entry's attribute: the category id its spurious cue names


@dataclass(frozen=True)
class ShortcutShares:
    """Each experiment's shortcut share on the test images whose cue is recorded.

    Attributes:
        values: per experiment (the comparison's order), the share over its seeds with its interval.
        diffs: per experiment, its share minus the first experiment's (paired over the same images).
        images: how many test images record the cue (those the shares are over).
        agreement: share of those images whose cue names their true class.
        classes: number of classes K (a model that ignores the cue follows it on about 1/K of images).
    """

    values: list[Interval]
    diffs: list[Interval]
    images: int
    agreement: float
    classes: int


def cue_classes(test_json: Path) -> dict[int, int] | None:
    """Image id -> the class index (categories sorted by id, as the models' outputs are) its cue names.

    Images without the attribute, or naming no category, are left out; None when no image has one
    (or the file cannot be read: the dataset moved since the launch).
    """
    try:
        coco = load_coco(test_json)
    except DataError:
        return None
    ids = sorted(c["id"] for c in coco["categories"] if isinstance(c, dict) and "id" in c)
    index = {category: i for i, category in enumerate(ids)}
    cues = {
        img["id"]: index[img[CUE_KEY]]
        for img in coco["images"]
        if isinstance(img, dict) and img.get(CUE_KEY) in index and isinstance(img.get("id"), int)
    }
    return cues or None


def shortcut_shares(
    entries: list[Entry], cues: dict[int, int], *, resamples: int = RESAMPLES, seed: int = SEED
) -> ShortcutShares | str:
    """The shares of ``entries`` (tested on the same images) over the images in ``cues``; a line saying why not."""
    if any(e.image_ids is None for e in entries):
        return "shortcut share: not computed (a launch saved no image ids with its test predictions)"
    ids = np.sort(entries[0].image_ids)
    kept = ids[np.isin(ids, list(cues))]
    if not kept.size:
        return "shortcut share: not computed (no test image of the launches records its cue)"
    target = np.array([cues[int(i)] for i in kept])
    probs = []
    for entry in entries:
        position = {int(image): k for k, image in enumerate(entry.image_ids)}
        probs.append(entry.probs_seeds[:, [position[int(i)] for i in kept]])
    values, diffs = seed_bootstrap(target, probs, accuracy, resamples=resamples, seed=seed)
    labels = entries[0].labels[[int(np.flatnonzero(entries[0].image_ids == i)[0]) for i in kept]]
    return ShortcutShares(values, diffs, int(kept.size), float(np.mean(labels == target)), probs[0].shape[2])


def shortcut_lines(entries: list[Entry]) -> list[str]:
    """The lines ``--compare`` prints: one per experiment and what they mean; none when no cue is recorded."""
    root = entries[0].dataset
    cues = cue_classes(Path(root) / "test.json") if root and root != "?" else None
    if cues is None:
        return []
    shares = shortcut_shares(entries, cues)
    if isinstance(shares, str):
        return [shares]
    first = entries[0].experiment
    lines = []
    for i, (entry, value) in enumerate(zip(entries, shares.values)):
        seeds = len(entry.probs_seeds)
        diff = f"; vs {first} {shares.diffs[i]}" if i else ""
        lines.append(
            f"shortcut share, {entry.experiment}: {value.value:.0%} [{value.low:.0%}, {value.high:.0%}] of "
            f"{shares.images} test images predicted as the class their {CUE_KEY} names "
            f"({seeds} seed{'s' if seeds > 1 else ''}{diff})"
        )
    lines.append(
        f"shortcut share: on these images the cue names the true class {shares.agreement:.0%} of the time "
        f"(chance with {shares.classes} classes: {1 / shares.classes:.0%}); a model that reads the lesion "
        "follows the cue about that often, one that reads the cue on up to every image. 95% two-level "
        "bootstrap intervals (images and seeds)"
    )
    return lines
