"""Cross-validation folds of a dataset's train and val splits (the test split is never touched).

The train and val images are pooled and cut into K folds with the rules ``split`` uses for the
train/val/test split (``medtune.data.split``): stratified by each image's class key, and never
separating a unit, where a unit is an image, the images sharing the ``group_by`` field the split was
made with (``info.split.group_by``), and every near-duplicate group (``medtune.data.duplicates``,
the launch's setting) merged with the units of its images. Same dataset, K, seed and setting: same folds.

A large unit can make the folds something other than K-fold cross-validation (one fold holding out
most of the pool, or most of a class): ``FoldPlan.unbalanced`` says so in one line
(``medtune.data.balance``), and the launch refuses such a plan unless the user accepts it.

The pool is also a cache file (``pool_cache``): the train split's images, then the val split's, so a
fold is a list of row indices into it. ``FoldPlan.digest`` names the assignment: two launches with
equal digests trained and scored their folds on the same images, so they can be compared fold by fold.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medtune.data import balance, cocoio, dataset_duplicates, duplicates, split
from medtune.data.cache import BATCH, build_cache, cache_ok, load_cache, save_tensors
from medtune.data.coco import DataError, Dataset
from medtune.data.streamed import Stream

POOL = ("train", "val")
PLAN_VERSION = "3"  # 2: class counts and the imbalance line; 3: suspicious groups


@dataclass(frozen=True)
class FoldPlan:
    """K folds over the pooled train+val images.

    Args:
        folds: K.
        seed: the launch's seed the assignment was drawn with.
        pool_ids: image ids in pool order (train split's images, then val's): the rows of ``pool_cache``.
        fold_of: the fold that holds each pool image out (same order as ``pool_ids``).
        duplicate_groups: near-duplicate groups of the pool, each kept inside one fold.
        class_counts: per class name, the images of that class each fold holds out.
        unbalanced: one line naming the folds that are not what they say and why; ``""`` when all are.
        suspicious: sizes of the near-duplicate groups over ``duplicates.group_bound`` that did not
            constrain the folds (the setting did not accept them, ``--accept-groups``).
    """

    folds: int
    seed: int
    pool_ids: tuple[int, ...]
    fold_of: tuple[int, ...]
    duplicate_groups: int = 0
    class_counts: tuple[tuple[str, tuple[int, ...]], ...] = ()
    unbalanced: str = ""
    suspicious: tuple[int, ...] = ()

    @property
    def digest(self) -> str:
        """16 hex digits naming the assignment (which image is held out by which fold)."""
        pairs = sorted(zip(self.pool_ids, self.fold_of))
        return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]

    def val_indices(self, k: int) -> list[int]:
        """Pool rows fold ``k`` holds out (scores on)."""
        return [row for row, fold in enumerate(self.fold_of) if fold == k]

    def train_indices(self, k: int) -> list[int]:
        """Pool rows fold ``k`` trains on."""
        return [row for row, fold in enumerate(self.fold_of) if fold != k]

    def val_image_ids(self, k: int) -> list[int]:
        return [self.pool_ids[row] for row in self.val_indices(k)]

    def sizes(self) -> list[int]:
        """Images each fold holds out, fold 0 first."""
        return [self.fold_of.count(k) for k in range(self.folds)]

    def as_json(self) -> dict:
        """What the launch logs as ``folds.json`` (analyze.py reads it to pair and size the folds)."""
        return {
            "folds": self.folds,
            "seed": self.seed,
            "digest": self.digest,
            "pool_size": len(self.pool_ids),
            "duplicate_groups": self.duplicate_groups,
            "sizes": self.sizes(),
            "class_counts": {name: list(counts) for name, counts in self.class_counts},
            "unbalanced": self.unbalanced,
            "suspicious_groups": list(self.suspicious),
            "val_image_ids": [self.val_image_ids(k) for k in range(self.folds)],
        }

    def describe(self) -> str:
        """One line: folds, pooled images and the images each fold holds out."""
        sizes = "/".join(map(str, self.sizes()))
        ignored = ""
        if self.suspicious:
            ignored = (
                f"; {len(self.suspicious)} suspicious groups ({sum(self.suspicious)} images) not used, "
                "--accept-groups uses them"
            )
        return (
            f"{self.folds}-fold cross-validation over {len(self.pool_ids)} train+val images "
            f"(held out per fold: {sizes}; {self.duplicate_groups} near-duplicate groups kept within a fold{ignored}; "
            f"digest {self.digest})"
        )


def plan_folds(
    dataset: Dataset,
    folds: int,
    *,
    seed: int,
    cache_root: Path,
    near: duplicates.Setting = duplicates.Setting(),
    pool: tuple[str, ...] = POOL,
) -> FoldPlan:
    """The folds of ``dataset``'s ``pool`` splits (train+val; all three for nested cross-validation's outer
    folds, ``medtune.data.outer``), computed once, then read from ``cache_root/folds``.

    The cache key holds everything the plan depends on: the dataset's content (its COCO files, so
    the split's ``group_by``, and its images), K, the seed, the pooled splits and the whole duplicate
    setting ``near``.
    """
    what = f"{PLAN_VERSION}|{dataset.fingerprint}|{folds}|{seed}|{near!r}" + ("" if pool == POOL else f"|{pool}")
    path = Path(cache_root) / "folds" / f"{dataset.name}-{hashlib.sha256(what.encode()).hexdigest()[:16]}.json"
    if path.is_file():
        raw = json.loads(path.read_text())
        return FoldPlan(
            folds,
            seed,
            tuple(raw["pool_ids"]),
            tuple(raw["fold_of"]),
            raw["duplicate_groups"],
            tuple((name, tuple(counts)) for name, counts in raw["class_counts"]),
            raw["unbalanced"],
            tuple(raw["suspicious"]),
        )
    plan = _plan(dataset, folds, seed, near, pool)
    path.parent.mkdir(parents=True, exist_ok=True)
    cached = ("pool_ids", "fold_of", "duplicate_groups", "class_counts", "unbalanced", "suspicious")
    cocoio.write_json_atomic(path, {name: getattr(plan, name) for name in cached})
    return plan


def _plan(dataset: Dataset, folds: int, seed: int, near: duplicates.Setting, pool: tuple[str, ...]) -> FoldPlan:
    where = dataset.coco_files["train"]
    pooled, group_by = _pool(dataset, pool)
    pool_ids = [img["id"] for img in pooled["images"]]
    units = split.units_of(where, pooled, group_by)
    files = {s: dataset.coco_files[s] for s in pool}
    found = dataset_duplicates.split_grouping(files, {s: dataset.images_dirs[s] for s in pool}, near)
    groups = [[{**img, "id": int(str(img["id"]).split(":", 1)[1])} for img in group] for group in found.groups]
    units = split.merge_units(units, groups)
    if len(units) < folds:
        raise DataError(
            f"{where}: {folds} folds need at least {folds} independent units (images, groups); the pool has {len(units)}"
        )
    shares = {k: 1.0 / folds for k in range(folds)}
    keys = split.image_keys(where, pooled)
    assigned = split.allocate(split.strata_of(units, keys), shares, random.Random(seed))
    fold_of_id = {i: assigned[unit] for unit, ids in units.items() for i in ids}
    named = {unit: f"fold {k}" for unit, k in assigned.items()}
    counts = balance.class_counts([f"fold {k}" for k in range(folds)], named, units, keys)
    kinds = balance.unit_kinds(units, {img["id"] for g in groups for img in g}, group_by)
    return FoldPlan(
        folds,
        seed,
        tuple(pool_ids),
        tuple(fold_of_id[i] for i in pool_ids),
        len(groups),
        tuple((name, tuple(per_fold.values())) for name, per_fold in counts.items()),
        balance.imbalance(
            "held out per fold", {f"fold {k}": 1.0 / folds for k in range(folds)}, named, units, keys, kinds
        ),
        tuple(len(g) for g in found.suspicious),
    )


def _pool(dataset: Dataset, pool: tuple[str, ...] = POOL) -> tuple[dict, str | None]:
    """The ``pool`` splits as one COCO dict (in ``pool`` order: train's images first), and the ``group_by``
    field the split recorded (``info.split.group_by``; None if none); raises ``DataError`` on an id in two."""
    cocos = {s: cocoio.load_coco(dataset.coco_files[s]) for s in pool}
    pooled = {
        "images": [img for s in pool for img in cocos[s]["images"]],
        "annotations": [ann for s in pool for ann in cocos[s]["annotations"]],
        "categories": cocos[pool[0]]["categories"],
    }
    seen: dict[object, str] = {}
    for s in pool:
        for img in cocos[s]["images"]:
            if img["id"] in seen and seen[img["id"]] != s:
                raise DataError(
                    f"{dataset.coco_files[s]}: image id {img['id']} is also in {dataset.coco_files[seen[img['id']]]}; "
                    f"cross-validation pools {'+'.join(pool)} and needs ids unique across them"
                )
            seen[img["id"]] = s
    recorded = (cocos[pool[0]].get("info") or {}).get("split")  # written by ``split``; a name elsewhere
    return pooled, recorded.get("group_by") if isinstance(recorded, dict) else None


def concat_caches(files: list[str | Path], out: Path) -> Path:
    """One cache file holding the rows of ``files`` in order (tensors concatenated, lists joined); built once.

    The tensors are streamed (``medtune.data.streamed``): ``BATCH`` rows at a time are copied from the
    memory-mapped parts into the file, so the pool of a large train and val split is never held in
    memory (at 512 px, 10,000 images are 7.5 GiB).
    """
    out = Path(out)
    if cache_ok(out):
        return out
    parts = [load_cache(f) for f in files]
    joined, streamed = {}, []
    for key, value in parts[0].items():
        values = [p[key] for p in parts]
        if isinstance(value, torch.Tensor):
            rows = sum(len(v) for v in values)  # a placeholder, never touched: written from the batches
            joined[key] = torch.empty((rows, *value.shape[1:]), dtype=value.dtype)
            streamed.append(key)
        else:
            joined[key] = [v for part in values for v in part]
    return save_tensors(joined, out, stream=Stream(streamed, _rows(parts, streamed)))


def _rows(parts: list[dict], keys: list[str]) -> Iterator[dict[str, np.ndarray]]:
    """``keys`` of each part in order, ``BATCH`` rows at a time."""
    for part in parts:
        for start in range(0, len(part[keys[0]]) if keys else 0, BATCH):
            yield {key: part[key][start : start + BATCH].numpy() for key in keys}


def pool_path(split_files: dict[str, str | Path]) -> Path:
    """Where the pool of the train and val cache (or mask) files goes: beside them, named after both."""
    train, val = Path(split_files["train"]), Path(split_files["val"])
    digest = hashlib.sha256(f"{train.name}|{val.name}".encode()).hexdigest()[:12]
    return train.parent / f"pool-{digest}{train.suffix}"


def pool_cache(dataset: Dataset, size: int, cache_root: Path) -> Path:
    """The image cache of the pooled train+val images at ``size`` px (rows in ``FoldPlan.pool_ids`` order)."""
    files = {s: build_cache(dataset, s, size, cache_root) for s in POOL}
    return concat_caches([files["train"], files["val"]], pool_path(files))
