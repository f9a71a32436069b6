"""Near-duplicate detection (``medtune.data.duplicates``) and its use by ``check``, ``split``, ``stats``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from medtune.data import duplicates, similarity
from medtune.data.__main__ import main

SIZE = 64
N_DISTINCT = 30
COPIES = {0: 1, 3: 2, 7: 1, 12: 1, 20: 2}  # original index -> planted copies (groups of 2 and 3)


def distinct_image(seed: int) -> Image.Image:
    """A smooth random grey picture: 8 x 8 noise blown up to ``SIZE`` px (hashes of two differ a lot)."""
    cells = np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)
    return Image.fromarray(cells).resize((SIZE, SIZE), Image.BICUBIC)


def planted_copy(image: Image.Image, k: int) -> Image.Image:
    """``image`` rescaled, cropped by 3 px, 10% brighter, rotated 2 degrees and saved as JPEG 60."""
    img = image.resize((SIZE * 9 // 10 + k, SIZE * 9 // 10 + k), Image.BILINEAR).crop(
        (3, 0, SIZE * 9 // 10 + k, SIZE * 9 // 10)
    )
    img = ImageEnhance.Brightness(img.rotate(2 * (-1) ** k, resample=Image.BILINEAR)).enhance(1.1)
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=60)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("L")


def planted_set() -> tuple[list[Image.Image], list[list[int]]]:
    """Distinct images followed by planted copies, and the expected groups (indices)."""
    images = [distinct_image(seed) for seed in range(N_DISTINCT)]
    groups = []
    for original, n in COPIES.items():
        groups.append([original])
        for k in range(n):
            groups[-1].append(len(images))
            images.append(planted_copy(images[original], k))
    return images, groups


def write_dataset(folder: Path) -> tuple[Path, list[list[int]]]:
    """The planted set as PNGs and a COCO file (two classes, patient per image); groups as image ids."""
    images, groups = planted_set()
    (folder / "images").mkdir(parents=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    for i, img in enumerate(images):
        img.save(folder / "images" / f"{i}.png")
        coco["images"].append(
            {"id": i + 1, "file_name": f"{i}.png", "width": img.width, "height": img.height, "patient_id": f"p{i // 4}"}
        )
        square = [1.0, 1.0, 9.0, 1.0, 9.0, 9.0, 1.0, 9.0]
        coco["annotations"].append(
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 1 + i % 2,
                "segmentation": [square],
                "area": 64.0,
                "bbox": [1, 1, 8, 8],
                "iscrowd": 0,
            }
        )
    path = folder / "all.json"
    path.write_text(json.dumps(coco))
    return path, [[i + 1 for i in group] for group in groups]


def test_detector_groups_planted_copies_and_only_them() -> None:
    images, expected = planted_set()
    prints = {i: duplicates.image_fingerprint(img) for i, img in enumerate(images)}
    found = duplicates.near_groups(prints, duplicates.Setting())
    # every planted copy joins its original; no two distinct images are grouped
    assert sorted(map(sorted, found)) == sorted(expected)
    # threshold 0 keeps exact copies only: transformed copies are not exact
    assert duplicates.near_groups(prints, duplicates.Setting(0, 1.0)) == []


def lookalikes(tmp_path: Path) -> list[Image.Image]:
    """Synthetic dermoscopy-like images at 64 px: every one a centred lesion on skin."""
    from medtune.data.synth import generate

    generate(tmp_path / "synth", n=60, size=64, seed=0)
    return [Image.open(f).convert("RGB") for f in sorted((tmp_path / "synth" / "images").glob("*.png"))]


def test_lookalikes_are_not_grouped_but_their_copies_are(tmp_path: Path) -> None:
    images = lookalikes(tmp_path)
    prints = [duplicates.image_fingerprint(img) for img in images]
    candidates = duplicates.near_pairs(np.stack([p.bits for p in prints]), duplicates.DEFAULT_THRESHOLD)
    # the hash alone proposes look-alike pairs that chain into a large group (why verification exists)
    assert max(map(len, duplicates.union_groups(list(range(len(images))), candidates))) > 10
    # the correlation confirms none of them
    groups = duplicates.near_groups(dict(enumerate(prints)), duplicates.Setting())
    assert groups == [], groups
    originals = range(0, len(images), 6)
    prints += [duplicates.image_fingerprint(planted_copy(images[k].convert("L"), k % 2)) for k in originals]
    groups = duplicates.near_groups(dict(enumerate(prints)), duplicates.Setting())
    group_of = {i: set(g) for g in groups for i in g}
    # every planted copy (index len(images) + c) joins its original
    assert all(k in group_of.get(len(images) + c, ()) for c, k in enumerate(originals)), groups


def test_similarity_scores_copies_above_lookalikes() -> None:
    images, expected = planted_set()
    thumbs = np.stack([similarity.thumbnail(img) for img in images])
    copies = [(group[0], member) for group in expected for member in group[1:]]
    score = similarity.pair_similarity(thumbs, copies + [(0, 1), (2, 3), (0, 0)])
    # planted copies correlate above the default; distinct images below; identical thumbnails score 1
    assert (score[: len(copies)] >= duplicates.DEFAULT_SIMILARITY).all(), score
    assert (score[len(copies) : -1] < duplicates.DEFAULT_SIMILARITY).all() and score[-1] == 1.0, score


def test_union_groups_is_transitive() -> None:
    # 0-1 and 1-2 are pairs, so 0, 1, 2 form one group even without the pair 0-2
    assert duplicates.union_groups(list("abcde"), [(0, 1), (1, 2), (3, 3)]) == [["a", "b", "c"]]


def test_check_lists_groups_and_a_straddling_group_fails_a_split_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    source, groups = write_dataset(tmp_path)
    assert main(["check", "--coco", str(source)]) == 0  # near duplicates in one file: information
    out = capsys.readouterr().out
    assert f"near duplicates ({duplicates.Setting().label}): {len(groups)} group(s)" in out
    coco = json.loads(source.read_text())
    original, copy = groups[0][0], groups[0][1]
    test_ids = {original} | set(range(25, 31))
    folder = tmp_path / "split"
    folder.mkdir()
    for split, keep in (
        ("train", lambda i: i not in test_ids and i != copy),
        ("val", lambda i: i == copy),
        ("test", lambda i: i in test_ids),
    ):
        part = {**coco, "images": [m for m in coco["images"] if keep(m["id"])]}
        part["annotations"] = [a for a in coco["annotations"] if keep(a["image_id"])]
        part["info"] = {"images_dir": str(tmp_path / "images")}
        (folder / f"{split}.json").write_text(json.dumps(part))
    assert main(["check", "--coco", str(folder)]) == 1
    out = capsys.readouterr().out
    # the straddling group is named with its splits, ids and file names
    assert f"id val:{copy} ({copy - 1}.png)" in out and f"id test:{original} ({original - 1}.png)" in out
    assert "straddling_duplicates: 1 group(s)" in out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_split_never_separates_a_group(tmp_path: Path, capsys: pytest.CaptureFixture, seed: int) -> None:
    source, groups = write_dataset(tmp_path)
    args = [
        "split",
        "--coco",
        str(source),
        "--out",
        str(tmp_path / "s"),
        "--seed",
        str(seed),
        "--group-by",
        "patient_id",
    ]
    assert main(args) == 0
    assert f"kept {len(groups)} near-duplicate groups" in capsys.readouterr().out
    where = {}
    for split in ("train", "val", "test"):
        for img in json.loads((tmp_path / "s" / f"{split}.json").read_text())["images"]:
            where[img["id"]] = (split, img["patient_id"])
    # each duplicate group lies in one split, and so does each patient (--group-by still holds)
    assert all(len({where[i][0] for i in group}) == 1 for group in groups)
    by_patient: dict[str, set[str]] = {}
    for split, patient in where.values():
        by_patient.setdefault(patient, set()).add(split)
    assert all(len(splits) == 1 for splits in by_patient.values())
    assert main(["check", "--coco", str(tmp_path / "s")]) == 0
    assert f"{len(groups)} duplicate group(s), 0 straddling" in capsys.readouterr().out


def test_split_opt_out_can_separate_groups(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source, groups = write_dataset(tmp_path)
    separated = 0
    for seed in range(4):
        assert (
            main(
                [
                    "split",
                    "--coco",
                    str(source),
                    "--out",
                    str(tmp_path / "s"),
                    "--seed",
                    str(seed),
                    "--ignore-duplicates",
                ]
            )
            == 0
        )
        splits = {
            img["id"]: s
            for s in ("train", "val", "test")
            for img in json.loads((tmp_path / "s" / f"{s}.json").read_text())["images"]
        }
        separated += sum(len({splits[i] for i in group}) > 1 for group in groups)
    # without grouping, the random split puts some group across the line (what the default prevents)
    assert separated > 0


def test_stats_prints_the_group_count(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source, groups = write_dataset(tmp_path)
    assert main(["stats", "--coco", str(source)]) == 0
    n_images = sum(map(len, groups))
    assert f"{len(groups)} groups, {n_images} images" in capsys.readouterr().out
    assert main(["stats", "--coco", str(source), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["duplicate_groups"]["groups"] == len(groups)


@pytest.mark.parametrize("command", ["check", "split", "stats"])
@pytest.mark.parametrize(
    ("flag", "value"),
    [("--near-threshold", v) for v in ("abc", "-1", "128")]
    + [("--near-similarity", v) for v in ("x", "-0.1", "1.5", "nan")],
)
def test_bad_setting_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, command: str, flag: str, value: str
) -> None:
    source, _ = write_dataset(tmp_path)
    extra = ["--out", str(tmp_path / "s")] if command == "split" else []
    assert main([command, "--coco", str(source), *extra, f"{flag}={value}"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and flag in err, err
