"""``medtune.data.folds`` pinned down field by field: the plan's digest, its JSON and its line, the cache
file (its key, what it holds, that a hit reads it), the pool of the splits, and the pooled cache
(mutation testing: ``benchmarks/mutation.sh``)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from medtune.data import cocoio, duplicates, folds
from medtune.data.cache import build_cache, load_cache
from medtune.data.coco import DataError, resolve_dataset
from medtune.data.folds import FoldPlan, plan_folds


@pytest.fixture(scope="module")
def dataset(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> object:
    return resolve_dataset(synth_dir, cache_root=tmp_path_factory.mktemp("resolved"))


def labels_of(dataset: object) -> dict[int, str]:
    """Class name of each pooled image (one annotation class per synthetic image)."""
    names, labels = {}, {}
    for split in ("train", "val"):
        coco = cocoio.load_coco(dataset.coco_files[split])
        names.update({c["id"]: c["name"] for c in coco["categories"]})
        labels.update({a["image_id"]: names[a["category_id"]] for a in coco["annotations"]})
    return labels


def test_digest_json_and_line_say_exactly_the_plan() -> None:
    plan = FoldPlan(2, 5, (7, 3, 9), (1, 0, 1), 1, (("a", (1, 2)),), "", (12, 11))
    pairs = [[3, 0], [7, 1], [9, 1]]
    # the digest names the (image, fold) pairs, sorted by image: 16 hex digits of their sha256
    assert plan.digest == hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]
    assert FoldPlan(2, 0, (9, 3, 7), (1, 0, 1), 0).digest == plan.digest  # order and metadata aside
    assert FoldPlan(2, 5, (7, 3, 9), (0, 0, 1)).digest != plan.digest
    assert plan.val_indices(1) == [0, 2] and plan.train_indices(1) == [1] and plan.val_image_ids(1) == [7, 9]
    assert plan.as_json() == {
        "folds": 2,
        "seed": 5,
        "digest": plan.digest,
        "pool_size": 3,
        "duplicate_groups": 1,
        "sizes": [1, 2],
        "class_counts": {"a": [1, 2]},
        "unbalanced": "",
        "suspicious_groups": [12, 11],
        "val_image_ids": [[3], [7, 9]],
    }
    assert plan.describe() == (
        "2-fold cross-validation over 3 train+val images (held out per fold: 1/2; 1 near-duplicate groups kept "
        "within a fold; 2 suspicious groups (23 images) not used, --accept-groups uses them; "
        f"digest {plan.digest})"
    )
    # no suspicious group: nothing said about them
    assert (
        FoldPlan(3, 0, (1, 2, 3), (0, 1, 2))
        .describe()
        .endswith(
            "(held out per fold: 1/1/1; 0 near-duplicate groups kept within a fold; "
            f"digest {FoldPlan(3, 0, (1, 2, 3), (0, 1, 2)).digest})"
        )
    )


def test_fresh_plan_holds_out_the_pool_once_by_class(dataset: object, tmp_path: Path) -> None:
    plan = plan_folds(dataset, 4, seed=3, cache_root=tmp_path)
    ids = [img["id"] for s in ("train", "val") for img in cocoio.load_coco(dataset.coco_files[s])["images"]]
    # pool order: the train split's images, then val's; the folds' held-out ids together are the pool
    assert list(plan.pool_ids) == ids and (plan.folds, plan.seed) == (4, 3)
    assert sorted(i for k in range(4) for i in plan.val_image_ids(k)) == sorted(ids)
    assert sorted(plan.sizes()) == [9, 10, 10, 10] and plan.unbalanced == "" and plan.suspicious == ()
    labels = labels_of(dataset)
    counts = {
        name: tuple(sum(labels[i] == name for i in plan.val_image_ids(k)) for k in range(4))
        for name in set(labels.values())
    }
    # the class counts per fold are those of the held-out images, classes in name order
    assert plan.class_counts == tuple(sorted(counts.items()))
    # stratified: each class spread over the folds within one image
    assert all(max(c) - min(c) <= 1 for c in counts.values()), counts
    assert plan.duplicate_groups == 0


def test_same_inputs_same_plan_another_seed_another(dataset: object, tmp_path: Path) -> None:
    first = plan_folds(dataset, 3, seed=1, cache_root=tmp_path / "a")
    # computed afresh in another cache folder: the same assignment (the seed drives the draw)
    assert plan_folds(dataset, 3, seed=1, cache_root=tmp_path / "b") == first
    assert plan_folds(dataset, 3, seed=2, cache_root=tmp_path / "c").digest != first.digest


def cache_file(dataset: object, root: Path, what: str) -> Path:
    return root / "folds" / f"{dataset.name}-{hashlib.sha256(what.encode()).hexdigest()[:16]}.json"


def test_cache_file_is_keyed_by_what_the_plan_depends_on(dataset: object, tmp_path: Path) -> None:
    root = tmp_path / "not" / "yet"  # parents are made
    near = duplicates.Setting()
    plan = plan_folds(dataset, 3, seed=4, cache_root=root)
    path = cache_file(dataset, root, f"{folds.PLAN_VERSION}|{dataset.fingerprint}|3|4|{near!r}")
    assert [p.name for p in (root / "folds").iterdir()] == [path.name]
    # the file holds every field a hit needs, and nothing the call already knows
    assert json.loads(path.read_text()) == {
        "pool_ids": list(plan.pool_ids),
        "fold_of": list(plan.fold_of),
        "duplicate_groups": plan.duplicate_groups,
        "class_counts": [[name, list(c)] for name, c in plan.class_counts],
        "unbalanced": plan.unbalanced,
        "suspicious": list(plan.suspicious),
    }
    # another K, seed, setting or pool: another file beside it (the folder exists already)
    plan_folds(dataset, 2, seed=4, cache_root=root)
    plan_folds(dataset, 3, seed=5, cache_root=root)
    plan_folds(dataset, 3, seed=4, cache_root=root, near=duplicates.Setting(0, 1.0))
    pool = ("train", "val", "test")
    plan_folds(dataset, 3, seed=4, cache_root=root, pool=pool)
    names = {p.name for p in (root / "folds").iterdir()}
    assert len(names) == 5
    assert cache_file(dataset, root, f"{folds.PLAN_VERSION}|{dataset.fingerprint}|3|4|{near!r}|{pool}").name in names


def test_cache_hit_returns_the_cached_plan(dataset: object, tmp_path: Path) -> None:
    fresh = plan_folds(dataset, 3, seed=0, cache_root=tmp_path)
    (path,) = (tmp_path / "folds").iterdir()
    raw = json.loads(path.read_text())
    # edit the cached plan: a hit must return what the file says, every field, not a recomputation
    raw["fold_of"] = [(f + 1) % 3 for f in raw["fold_of"]]
    raw.update(duplicate_groups=7, unbalanced="edited", suspicious=[13], class_counts=[["x", [1, 2, 3]]])
    path.write_text(json.dumps(raw))
    hit = plan_folds(dataset, 3, seed=0, cache_root=tmp_path)
    assert hit == FoldPlan(
        3, 0, fresh.pool_ids, tuple((f + 1) % 3 for f in fresh.fold_of), 7, (("x", (1, 2, 3)),), "edited", (13,)
    )
    assert isinstance(hit.pool_ids, tuple) and isinstance(hit.fold_of, tuple)


def test_folds_need_as_many_units_as_folds(dataset: object, tmp_path: Path) -> None:
    n = len(plan_folds(dataset, 2, seed=0, cache_root=tmp_path).pool_ids)
    # one image per fold is the most folds there can be
    assert sorted(plan_folds(dataset, n, seed=0, cache_root=tmp_path).sizes()) == [1] * n
    with pytest.raises(DataError) as refused:
        plan_folds(dataset, n + 1, seed=0, cache_root=tmp_path)
    assert str(refused.value) == (
        f"{dataset.coco_files['train']}: {n + 1} folds need at least {n + 1} independent units (images, groups); "
        f"the pool has {n}"
    )


def test_an_id_in_two_pooled_splits_is_refused(synth_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    train, val = (cocoio.load_coco(data / f"{s}.json") for s in ("train", "val"))
    val["images"][2]["id"] = train["images"][1]["id"]
    cocoio.write_json_atomic(data / "val.json", val)
    dataset = resolve_dataset(data, cache_root=tmp_path)
    with pytest.raises(DataError) as refused:
        folds._pool(dataset)
    assert str(refused.value) == (
        f"{dataset.coco_files['val']}: image id {train['images'][1]['id']} is also in {dataset.coco_files['train']}; "
        "cross-validation pools train+val and needs ids unique across them"
    )


def test_pool_joins_the_splits_and_reads_the_recorded_group_by(synth_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    cocos = {s: cocoio.load_coco(data / f"{s}.json") for s in ("train", "val", "test")}
    pooled, group_by = folds._pool(resolve_dataset(data, cache_root=tmp_path), ("val", "test"))
    # in pool order, images and annotations alike; the categories of the first pooled split
    assert pooled["images"] == cocos["val"]["images"] + cocos["test"]["images"]
    assert pooled["annotations"] == cocos["val"]["annotations"] + cocos["test"]["annotations"]
    assert pooled["categories"] == cocos["val"]["categories"] and group_by is None
    # the first split's recorded split: its group_by; a split recorded only by name: none
    cocos["train"]["info"] = {"split": {"name": "train", "group_by": "patient_id"}}
    cocos["val"]["info"] = {"split": "val"}
    for s in ("train", "val"):
        cocoio.write_json_atomic(data / f"{s}.json", cocos[s])
    dataset = resolve_dataset(data, cache_root=tmp_path)
    assert folds._pool(dataset)[1] == "patient_id" and folds._pool(dataset, ("val", "train"))[1] is None


def test_pool_cache_is_train_then_val_beside_them(dataset: object, tmp_path: Path) -> None:
    path = folds.pool_cache(dataset, 16, tmp_path)
    train, val = (build_cache(dataset, s, 16, tmp_path) for s in ("train", "val"))
    digest = hashlib.sha256(f"{train.name}|{val.name}".encode()).hexdigest()[:12]
    # beside the split caches, named after both, the same suffix
    assert path == train.parent / f"pool-{digest}{train.suffix}"
    assert folds.pool_path({"train": str(train), "val": val}) == path
    pooled, parts = load_cache(path), [load_cache(train), load_cache(val)]
    assert torch.equal(pooled["images"], torch.cat([p["images"] for p in parts]))
    assert pooled["labels"] == parts[0]["labels"] + parts[1]["labels"]
    # built once: a second call finds it and leaves it as it is
    stamp = path.stat().st_mtime_ns
    assert folds.pool_cache(dataset, 16, tmp_path) == path and path.stat().st_mtime_ns == stamp


def test_bad_pool_entries_are_named_with_the_train_file(synth_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    train = cocoio.load_coco(data / "train.json")
    train["info"] = {"split": {"name": "train", "group_by": "patient_id"}}  # no image has a patient_id
    cocoio.write_json_atomic(data / "train.json", train)
    dataset = resolve_dataset(data, cache_root=tmp_path)
    with pytest.raises(DataError) as refused:
        plan_folds(dataset, 3, seed=0, cache_root=tmp_path)
    first = train["images"][0]["id"]
    assert str(refused.value) == (
        f"{dataset.coco_files['train']}: image {first} has no string or number 'patient_id' (needed by --group-by)"
    )
    del train["info"]
    val = cocoio.load_coco(data / "val.json")
    val["annotations"][0]["category_id"] = 99
    cocoio.write_json_atomic(data / "train.json", train)
    cocoio.write_json_atomic(data / "val.json", val)
    dataset = resolve_dataset(data, cache_root=tmp_path)
    with pytest.raises(DataError) as refused:
        plan_folds(dataset, 3, seed=0, cache_root=tmp_path)
    # an unknown class in the pooled val split is reported against the train file, where the pool is named
    assert str(refused.value).startswith(f"{dataset.coco_files['train']}: annotation {val['annotations'][0]['id']} ")


def test_nested_pool_plans_over_all_three_splits(dataset: object, tmp_path: Path) -> None:
    pool = ("train", "val", "test")
    plan = plan_folds(dataset, 3, seed=0, cache_root=tmp_path, pool=pool)
    ids = [img["id"] for s in pool for img in cocoio.load_coco(dataset.coco_files[s])["images"]]
    # the test split's images are pooled and held out too
    assert list(plan.pool_ids) == ids and sorted(plan.sizes()) == [16, 16, 16]


def test_concat_of_one_file_and_of_lists_only(tmp_path: Path) -> None:
    from medtune.data.cache import save_tensors

    one = save_tensors(
        {"probs": torch.arange(12, dtype=torch.uint8).reshape(3, 4), "labels": [torch.tensor(k) for k in range(3)]},
        tmp_path / "one.pt",
    )
    joined = load_cache(folds.concat_caches([one], tmp_path / "joined-one.pt"))
    # one part: the part itself
    assert torch.equal(joined["probs"], load_cache(one)["probs"]) and [int(t) for t in joined["labels"]] == [0, 1, 2]
    parts = [save_tensors({"labels": [torch.tensor(i)] * (i + 1)}, tmp_path / f"lists{i}.pt") for i in range(2)]
    joined = load_cache(folds.concat_caches(parts, tmp_path / "joined-lists.pt"))
    # no tensor to stream, only lists: joined in order
    assert [int(t) for t in joined["labels"]] == [0, 1, 1]
