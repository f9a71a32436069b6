"""The plan of the synthetic dataset: which class, marker colour and findings each image gets.

``assign_splits`` balances the classes over train, val and test and sets how often the spurious
corner marker names the class (``cue_agreement``, or independent of it in the splits ``SHIFTS``
shifts); ``assign_findings`` picks which images show the multi-label artefact findings. Both draw
from generators seeded by ``seed`` alone, so a plan is the same for the same arguments.
``medtune.data.tools.synth`` writes the files from the plan; ``synth_render`` draws each image.
"""

from __future__ import annotations

import numpy as np

from medtune.data.tools.synth_render import CLASSES, FINDING_SHARE, FINDINGS, SPLITS

SHIFTS: dict[str, tuple[str, ...]] = {"test": ("test",), "val+test": ("val", "test"), "none": ()}


def assign_splits(
    n: int,
    *,
    seed: int = 0,
    train_share: float = 0.6,
    val_share: float = 0.2,
    cue_agreement: float = 0.9,
    shift: str = "test",
) -> dict[str, list[tuple[int, int]]]:
    """Plan (class index, marker class index) for every image of each split.

    Classes are balanced (``n // 3`` each, the remainder to the first classes) and split per class.
    A split outside ``SHIFTS[shift]`` follows the training distribution: exactly
    ``round(cue_agreement * n_split)`` markers agree with the class and the others name another class
    at random. A shifted split (by default test alone: the deployment shift, after a search that
    selected on a val split like train) gets the class shifted by a balanced random offset, so a third
    of the markers agree and each class gets each marker colour about equally.
    """
    if shift not in SHIFTS:
        raise ValueError(f"shift must be one of {', '.join(SHIFTS)}, got '{shift}'")
    rng = np.random.default_rng(seed)
    labels: dict[str, list[int]] = {split: [] for split in SPLITS}
    for label in range(len(CLASSES)):
        count = n // len(CLASSES) + int(label < n % len(CLASSES))
        n_train = int(count * train_share + 0.5)
        n_val = min(int(count * val_share + 0.5), count - n_train)
        for split, k in zip(SPLITS, (n_train, n_val, count - n_train - n_val)):
            labels[split] += [label] * k
    plan = {}
    for split in SPLITS:
        y = rng.permutation(np.array(labels[split], dtype=np.int64))
        if split not in SHIFTS[shift]:  # exactly round(cue_agreement * n) offsets are 0, the others 1 or 2
            agree = rng.permutation(len(y)) < round(cue_agreement * len(y))
            offset = np.where(agree, 0, rng.integers(1, len(CLASSES), len(y)))
        else:  # offsets 0, 1, 2 equally often, shuffled: the marker carries no information on the class
            offset = rng.permutation(np.arange(len(y)) % len(CLASSES))
        markers = (y + offset) % len(CLASSES)
        plan[split] = list(zip(y.tolist(), markers.tolist()))
    return plan


def assign_findings(plan: dict[str, list[tuple[int, int]]], *, seed: int = 0) -> dict[str, list[tuple[int, ...]]]:
    """The findings (indices into ``FINDINGS``) of every image of each split.

    Finding ``f`` is shown by exactly ``round(FINDING_SHARE[f] * n)`` images of a split of ``n``,
    clamped to [1, n - 1] so that every split of two or more images has both positives and negatives.
    """
    rng = np.random.default_rng([seed, 1])
    out = {}
    for split in SPLITS:
        n = len(plan[split])
        chosen = [set(rng.permutation(n)[: min(max(round(s * n), 1), n - 1)].tolist()) for s in FINDING_SHARE]
        out[split] = [tuple(f for f in range(len(FINDINGS)) if i in chosen[f]) for i in range(n)]
    return out
