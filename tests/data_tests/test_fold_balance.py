"""Folds that are what they say: every pooled image held out once, groups kept in one fold, the cached plan
equal to a fresh one, and an unbalanced plan said in one line and refused unless accepted."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medtune.config.options import LaunchOptions
from medtune.data import balance, cocoio, duplicates
from medtune.data.coco import DataError, resolve_dataset
from medtune.data.folds import FoldPlan, plan_folds
from medtune.prepare.inputs import check_balance, plan_checked_folds
from tests.pipeline_tests.test_launch_bad_input import assert_clean_refusal, run_launch


def grouped_copy(synth_dir: Path, out: Path, patient_of: callable) -> tuple[Path, dict[int, str]]:
    """``synth_dir`` copied to ``out``, its pooled (train, then val) images given ``patient_id`` =
    ``patient_of(position in the pool)`` and the train split recorded as grouped by it, as ``split
    --group-by patient_id`` records it."""
    shutil.copytree(synth_dir, out)
    position, patients = 0, {}
    for name in ("train", "val"):
        coco = cocoio.load_coco(out / f"{name}.json")
        for img in coco["images"]:
            img["patient_id"] = patients[img["id"]] = patient_of(position)
            position += 1
        if name == "train":
            coco["info"] = {**coco.get("info", {}), "split": {"name": "train", "group_by": "patient_id"}}
        cocoio.write_json_atomic(out / f"{name}.json", coco)
    return out, patients


def pool_ids(data: Path) -> list[int]:
    return [img["id"] for name in ("train", "val") for img in cocoio.load_coco(data / f"{name}.json")["images"]]


@pytest.mark.parametrize("k", [2, 5])
def test_held_out_images_are_the_pool_exactly_once(k: int, synth_dir: Path, tmp_path: Path) -> None:
    dataset = resolve_dataset(synth_dir, cache_root=tmp_path)
    plan = plan_folds(dataset, k, seed=0, cache_root=tmp_path)
    held_out = [i for fold in range(k) for i in plan.val_image_ids(fold)]
    # Folds 0..K-1 together hold out every pooled image once: none left out, none twice.
    assert sorted(held_out) == sorted(pool_ids(synth_dir)) and len(set(held_out)) == len(held_out)
    # Only the K folds exist, each holds something out and trains on the rest.
    assert set(plan.fold_of) == set(range(k)) and plan.sizes() == [len(plan.val_indices(f)) for f in range(k)]
    assert all(len(plan.train_indices(f)) == len(held_out) - plan.sizes()[f] for f in range(k))
    # The 39 images of three classes split evenly: nothing to warn about.
    assert max(plan.sizes()) - min(plan.sizes()) <= 1 and plan.unbalanced == ""
    counts = dict(plan.class_counts)
    assert sorted(counts) == ["atypical", "melanoma", "nevus"] and sum(map(sum, counts.values())) == len(held_out)


def test_patients_and_near_duplicates_stay_in_one_fold(synth_dir: Path, tmp_path: Path) -> None:
    # Patients of three consecutive pool images; the last train patient reaches into val.
    data, patient = grouped_copy(synth_dir, tmp_path / "data", lambda position: f"p{position // 3}")
    # A planted copy of the first val image (another patient) as a new train image: a near-duplicate pair.
    train, val = (cocoio.load_coco(data / f"{s}.json") for s in ("train", "val"))
    original = val["images"][0]
    images_dir = cocoio.images_dir_for(data / "val.json", val)
    shutil.copy(images_dir / original["file_name"], images_dir / "copy.png")
    copy_id = 1000
    train["images"].append({**original, "id": copy_id, "file_name": "copy.png", "patient_id": "lone"})
    train["annotations"] += [
        {**a, "id": 1000 + n, "image_id": copy_id}
        for n, a in enumerate(a for a in val["annotations"] if a["image_id"] == original["id"])
    ]
    cocoio.write_json_atomic(data / "train.json", train)
    patient[copy_id] = "lone"

    plan = plan_folds(resolve_dataset(data, cache_root=tmp_path), 3, seed=0, cache_root=tmp_path)
    fold = dict(zip(plan.pool_ids, plan.fold_of))
    folds_of_patient: dict[str, set[int]] = {}
    for image_id, p in patient.items():
        folds_of_patient.setdefault(p, set()).add(fold[image_id])
    # No patient is held out by two folds (the split's group_by holds for the folds too) ...
    assert all(len(folds) == 1 for folds in folds_of_patient.values()), folds_of_patient
    # ... and the copy is held out with its original, dragging the original's patient along.
    assert fold[copy_id] == fold[original["id"]] and plan.duplicate_groups >= 1


def test_cached_plan_is_the_fresh_plan_and_keyed_by_the_setting(synth_dir: Path, tmp_path: Path) -> None:
    dataset = resolve_dataset(synth_dir, cache_root=tmp_path)
    fresh = plan_folds(dataset, 3, seed=0, cache_root=tmp_path / "a")
    (cached_file,) = (tmp_path / "a" / "folds").iterdir()
    # Read back from the cache: the same plan, every field (ids, folds, groups, class counts, balance line).
    hit = plan_folds(dataset, 3, seed=0, cache_root=tmp_path / "a")
    assert isinstance(hit, FoldPlan) and hit == fresh and hit.class_counts
    # Another duplicate setting can give other groups, so it is another cache entry, not this one's hit.
    exact = plan_folds(dataset, 3, seed=0, cache_root=tmp_path / "a", near=duplicates.Setting(0, 1.0))
    assert len(list((tmp_path / "a" / "folds").iterdir())) == 2 and cached_file.exists()
    assert exact.pool_ids == fresh.pool_ids


def test_imbalance_line_names_sizes_and_the_group() -> None:
    # The dermoscopy case: 175 pooled images, a near-duplicate group of 92 held out by fold 0.
    units: dict[object, list[int]] = {"group": list(range(92))}
    units.update({("image", i): [i] for i in range(92, 175)})
    sizes = [14, 18, 17, 17, 17]  # single images per fold besides the group
    where = {"group": "fold 0"}
    singles = iter(range(92, 175))
    for k, n in enumerate(sizes):
        where.update({("image", next(singles)): f"fold {k}" for _ in range(n)})
    keys = {i: ("lesion",) for i in range(175)}
    kinds = balance.unit_kinds(units, set(range(92)), None)
    shares = {f"fold {k}": 0.2 for k in range(5)}
    line = balance.imbalance("held out per fold", shares, where, units, keys, kinds)
    expected = "held out per fold: 106/18/17/17/17 (fair 35): fold 0 is 3.0x its share because a near-duplicate group of 92 images is kept whole"
    assert line.startswith(expected) and "\n" not in line
    # Every other fold is short of the class too: three problems are named, the other two counted.
    assert line.count("class 'lesion' has ") == 2 and line.endswith("; and 2 more")
    assert (
        "class 'lesion' has 18 of 175 in fold 1 (fair 35) because a near-duplicate group of 92 images is kept whole in fold 0"
        in line
    )


def test_rounding_alone_is_not_an_imbalance() -> None:
    # 7 single images of a class over 5 folds, and a rare class of 4: some fold must miss or double one.
    units = {i: [i] for i in range(11)}
    keys = {i: ("common",) if i < 7 else ("rare",) for i in range(11)}
    where = {i: f"fold {i % 5}" for i in range(11)}  # sizes 3/2/2/2/2; fold 1 has no rare image
    shares = {f"fold {k}": 0.2 for k in range(5)}
    assert balance.imbalance("held out per fold", shares, where, units, keys, {}) == ""
    # A split: val's share 0.15 of 20 images is 3; 5 is over 1.5x and over 3 rounded up.
    where = {i: "val" if i < 5 else "train" for i in range(20)}
    line = balance.imbalance(
        "images per split",
        {"train": 0.85, "val": 0.15},
        where,
        {i: [i] for i in range(20)},
        {i: () for i in range(20)},
        {},
    )
    assert line == "images per split: 15/5 (fair 17/3): val is 1.7x its share"


def unbalanced_data(synth_dir: Path, out: Path) -> Path:
    """The synthetic set with one patient holding the first 20 of the 39 pooled images."""
    return grouped_copy(synth_dir, out, lambda position: "big" if position < 20 else f"p{position}")[0]


def test_unbalanced_plan_is_refused_unless_accepted(
    synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = unbalanced_data(synth_dir, tmp_path / "data")
    plan = plan_folds(resolve_dataset(data, cache_root=tmp_path), 3, seed=0, cache_root=tmp_path)
    # 20 of 39 images in one fold of 3 (fair 13): said, with the sizes and the patient group to blame.
    assert plan.unbalanced.startswith("held out per fold: ") and "(fair 13): fold " in plan.unbalanced
    assert "because a 'patient_id' group of 20 images is kept whole" in plan.unbalanced
    assert max(plan.sizes()) >= 20 and plan.as_json()["sizes"] == plan.sizes()
    assert plan.as_json()["unbalanced"] == plan.unbalanced and set(plan.as_json()["class_counts"]) == {
        "atypical",
        "melanoma",
        "nevus",
    }
    with pytest.raises(DataError) as refused:
        check_balance(plan, accept=False)
    message = str(refused.value)
    assert "\n" not in message and plan.unbalanced in message and "--accept-unbalanced-folds" in message
    # Accepted: a warning on stderr, no error.
    check_balance(plan, accept=True)
    assert "warning:" in capsys.readouterr().err
    # A balanced plan passes without a word.
    check_balance(FoldPlan(2, 0, (1, 2), (0, 1)), accept=False)
    assert capsys.readouterr().err == ""


def test_launch_refuses_unbalanced_folds_before_anything_is_written(
    synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = unbalanced_data(synth_dir, tmp_path / "data")
    code, err = run_launch(tmp_path, capsys, "--space", "whole_cls", "--smoke", "--folds", "3", "--data", str(data))
    # One line (exit 2) naming the sizes and the flag; no MLflow run, no Ray results folder.
    assert_clean_refusal(tmp_path, code, err, "held out per fold: ")
    assert len(err.strip().splitlines()) == 1 and "--accept-unbalanced-folds" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_suspicious_group_does_not_bind_the_folds_unless_accepted(synth_dir: Path, tmp_path: Path) -> None:
    # Eleven copies of one train image: a group of 12, over the trusted bound of 10 images.
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    train = cocoio.load_coco(data / "train.json")
    images_dir = cocoio.images_dir_for(data / "train.json", train)
    original = train["images"][0]
    copies = list(range(1000, 1011))
    for n, copy_id in enumerate(copies):
        shutil.copy(images_dir / original["file_name"], images_dir / f"copy{n}.png")
        train["images"].append({**original, "id": copy_id, "file_name": f"copy{n}.png"})
        train["annotations"] += [
            {**a, "id": 1000 + 10 * n + m, "image_id": copy_id}
            for m, a in enumerate(a for a in train["annotations"] if a["image_id"] == original["id"])
        ]
    cocoio.write_json_atomic(data / "train.json", train)
    dataset = resolve_dataset(data, cache_root=tmp_path)
    group = [original["id"], *copies]

    plan = plan_folds(dataset, 3, seed=0, cache_root=tmp_path)
    fold = dict(zip(plan.pool_ids, plan.fold_of))
    # Reported, not used: the copies spread over the folds like any images, and the launch line says so.
    assert plan.suspicious == (12,) and len({fold[i] for i in group}) > 1
    assert "1 suspicious groups (12 images) not used, --accept-groups uses them" in plan.describe()
    # --accept-groups (the launch's options, as prepare builds the setting): the 12 are held out together.
    options = LaunchOptions(space="whole_cls", folds=3, accept_groups=True, cache_dir=tmp_path)
    accepted = plan_checked_folds(dataset, 3, options)
    fold = dict(zip(accepted.pool_ids, accepted.fold_of))
    assert accepted.suspicious == () and len({fold[i] for i in group}) == 1 and accepted.duplicate_groups >= 1
