"""Whether a split or a set of folds is what it says: each part near its share of images and of each class.

``split`` and the cross-validation folds never separate a unit (an image, a ``--group-by`` group, a
near-duplicate group merged with the units of its images). A large unit then makes one part far
larger than its share, or takes most of a class into one part: a "5-fold" cross-validation whose
first fold holds out 106 of 175 images, or a test split with half its share of a rare class. This
module finds that and says it in one line, naming the sizes and the unit that caused it.

A part is *too large* when it holds more than ``SIZE_FACTOR`` times its fair share of the images; a
class is *short* in a part when the part holds less than ``CLASS_KEEP`` of the class's fair share.
Rounding alone never counts: a part is too large only above the fair share rounded up, and a class
short only below it rounded down (a class of 4 images over 5 folds leaves one fold without it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

SIZE_FACTOR = 1.5  # a part holding more than 1.5x its fair share of images is not the part it claims to be
CLASS_KEEP = 2 / 3  # a class losing more than a third of its fair share in a part
MAX_PROBLEMS = (
    3  # problems named in the line; the rest are counted (one oversized fold makes every class short elsewhere)
)


def unit_kinds(units: Mapping[object, Sequence[int]], duplicate_ids: set[int], group_by: str | None) -> dict:
    """What keeps each unit of more than one image whole, in words: ``near-duplicate group``, ..."""
    kinds = {}
    for unit, ids in units.items():
        if len(ids) < 2:
            continue
        near = any(i in duplicate_ids for i in ids)
        if group_by and near:
            kinds[unit] = f"'{group_by}' group joined by near duplicates"
        else:
            kinds[unit] = "near-duplicate group" if near else f"'{group_by}' group"
    return kinds


def imbalance(
    label: str,
    shares: Mapping[str, float],
    where: Mapping[object, str],
    units: Mapping[object, Sequence[int]],
    keys: Mapping[int, tuple[str, ...]],
    kinds: Mapping[object, str],
) -> str:
    """One line naming the parts that are not what they say, or ``""`` when every part is.

    Args:
        label: what the sizes are, e.g. ``held out per fold``.
        shares: each part's name (``fold 0``, ``val``) and share of the images; parts with share 0 are skipped.
        where: the part of each unit.
        units: image ids per unit.
        keys: the class names of each image.
        kinds: why a unit of several images is kept whole (:func:`unit_kinds`).
    """
    parts = [p for p in shares if shares[p] > 0]
    members = {p: [u for u in units if where[u] == p] for p in parts}
    sizes = {p: sum(len(units[u]) for u in members[p]) for p in parts}
    total = sum(sizes.values())
    problems = []
    for p in parts:
        fair = shares[p] * total
        if sizes[p] > SIZE_FACTOR * fair and sizes[p] > math.ceil(fair):
            problems.append(f"{p} is {sizes[p] / fair:.1f}x its share" + _because(members[p], units, kinds))
    for name, counts in class_counts(parts, where, units, keys).items():
        n = sum(counts.values())
        for p in parts:
            fair = shares[p] * n
            if counts[p] < CLASS_KEEP * fair and counts[p] < math.floor(fair):
                elsewhere = [u for u in units if where[u] != p and any(name in keys[i] for i in units[u])]
                short = f"class '{name}' has {counts[p]} of {n} in {p} (fair {fair:.0f})"
                problems.append(short + _because(elsewhere, units, kinds, where))
    if not problems:
        return ""
    fairs = sorted({f"{shares[p] * total:.0f}" for p in parts}, key=float)
    fair_text = fairs[0] if len(fairs) == 1 else "/".join(f"{shares[p] * total:.0f}" for p in parts)
    more = f"; and {len(problems) - MAX_PROBLEMS} more" if len(problems) > MAX_PROBLEMS else ""
    sizes_text = "/".join(str(sizes[p]) for p in parts)
    return f"{label}: {sizes_text} (fair {fair_text}): " + "; ".join(problems[:MAX_PROBLEMS]) + more


def class_counts(
    parts: Sequence[str], where: Mapping[object, str], units: Mapping[object, Sequence[int]], keys: Mapping
) -> dict[str, dict[str, int]]:
    """Images of each class (by name) in each part; an image with several classes counts for each."""
    names = sorted({name for ids in units.values() for i in ids for name in keys[i]})
    counts = {name: dict.fromkeys(parts, 0) for name in names}
    for unit, ids in units.items():
        for i in ids:
            for name in keys[i]:
                counts[name][where[unit]] += 1
    return counts


def _because(candidates: list, units: Mapping, kinds: Mapping, where: Mapping | None = None) -> str:
    """`` because a <kind> of N images is kept whole [in <part>]``: the largest kept-whole unit among
    ``candidates``; ``""`` when every candidate is a single image (then no group is to blame)."""
    grouped = [u for u in candidates if u in kinds]
    if not grouped:
        return ""
    unit = max(grouped, key=lambda u: len(units[u]))
    place = f" in {where[unit]}" if where is not None else ""
    return f" because a {kinds[unit]} of {len(units[unit])} images is kept whole{place}"
