"""Nested cross-validation's outer folds: the whole dataset cut into K folds, one dataset per outer fold.

Every image of train, val and test is pooled and cut into K outer folds by the rules of the inner
folds (``medtune.data.folds``: stratified by class, ``group_by`` units and near-duplicate groups kept
whole). Outer fold ``k`` becomes an ordinary dataset folder (``outer_dataset``): its test split is
fold ``k``'s images, its train and val splits the other folds' images, split by ``medtune.data.split``
(stratified, groups whole, ``INNER_VAL`` of them for val). A search on that folder never sees fold
``k``, so its winner's test predictions are out-of-sample for every image of the fold.

The folders are written once under ``<cache>/outer/<digest>/`` (``digest``: the plan's) and are the same
for every launch with the same dataset, K, seed and duplicate setting: a nested segmentation launch and
a nested masked launch share them, so the masked launch finds, through the registry's per-dataset
champion, the segmenter of its own outer fold (one that never saw the fold's images).
"""

from __future__ import annotations

import os
from pathlib import Path

from medtune.data import cocoio, duplicates
from medtune.data.coco import SPLITS, DataError, Dataset
from medtune.data.folds import FoldPlan, _pool, plan_folds
from medtune.data.split import split_coco

INNER_VAL = 0.2  # share of an outer fold's training part that its search validates on (without inner folds)


def plan_outer(dataset: Dataset, folds: int, *, seed: int, cache_root: Path, near: duplicates.Setting) -> FoldPlan:
    """The K outer folds over all of ``dataset``'s images (train, val and test pooled)."""
    if folds < 2:
        raise DataError(f"--outer-folds: expected an integer >= 2, got {folds}")
    return plan_folds(dataset, folds, seed=seed, cache_root=cache_root, near=near, pool=SPLITS)


def describe(plan: FoldPlan) -> str:
    """One line: the outer folds, their sizes and digest."""
    sizes = "/".join(map(str, plan.sizes()))
    return (
        f"nested cross-validation: {plan.folds} outer folds over all {len(plan.pool_ids)} images "
        f"(held out per outer fold: {sizes}; {plan.duplicate_groups} near-duplicate groups kept within a fold; "
        f"digest {plan.digest})"
    )


def fold_name(dataset: Dataset, k: int, folds: int) -> str:
    """The dataset name of outer fold ``k`` (what the registry's model names carry): ``<name>-outer<k>of<K>``."""
    return f"{dataset.name}-outer{k}of{folds}"


def outer_dataset(dataset: Dataset, plan: FoldPlan, k: int, *, cache_root: Path, seed: int) -> Path:
    """The folder of outer fold ``k`` (train/val/test COCO files over the original images), written once."""
    out = Path(cache_root) / "outer" / plan.digest / fold_name(dataset, k, plan.folds)
    if all((out / f"{split}.json").is_file() for split in SPLITS):
        return out
    whole, group_by = _pool(dataset, SPLITS)  # refuses an image id in two splits
    split_of = {img["id"]: s for s in SPLITS for img in cocoio.load_coco(dataset.coco_files[s])["images"]}
    root = _common_images_dir(dataset)
    whole["images"] = [_relative(img, dataset.images_dirs[split_of[img["id"]]], root) for img in whole["images"]]
    held_out = set(plan.val_image_ids(k))
    out.mkdir(parents=True, exist_ok=True)
    info = {"images_dir": str(root), "split": {"group_by": group_by}, "outer_fold": {"k": k, "of": plan.folds}}
    rest = out / "rest.json"
    cocoio.write_json_atomic(rest, _subset(whole, lambda i: i not in held_out, info))
    near = duplicates.Setting()
    split_coco(rest, out, val=INNER_VAL, test=0.0, seed=seed, images_dir=root, group_by=group_by, near=near)
    test = _subset(whole, lambda i: i in held_out, info)
    test["info"] = {**info, "split": {"name": "test", "group_by": group_by, "outer_fold": k}}
    cocoio.write_json_atomic(out / "test.json", test)  # last: its presence says the folder is whole
    rest.unlink()
    return out


def _subset(coco: dict, keep, info: dict) -> dict:
    images = [img for img in coco["images"] if keep(img["id"])]
    ids = {img["id"] for img in images}
    annotations = [ann for ann in coco["annotations"] if ann["image_id"] in ids]
    return {"info": info, "images": images, "annotations": annotations, "categories": coco["categories"]}


def _common_images_dir(dataset: Dataset) -> Path:
    """The folder all splits' image folders lie in (the same folder for most datasets)."""
    return Path(os.path.commonpath([str(dataset.images_dirs[s]) for s in SPLITS]))


def _relative(img: dict, images_dir: Path, root: Path) -> dict:
    """``img`` with its ``file_name`` relative to ``root`` instead of its split's ``images_dir``."""
    return {**img, "file_name": (images_dir / img["file_name"]).relative_to(root).as_posix()}
