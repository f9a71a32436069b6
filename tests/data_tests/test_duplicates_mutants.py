"""``medtune.data.duplicates`` and ``dataset_duplicates`` pinned down: the setting's flags and words, the
hash stage against brute force, the bounds of every rule (threshold, floor, coherence, tightness, group
bound) met exactly, and the report lines (mutation testing: ``benchmarks/mutation.sh``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtune.data import cocoio, dataset_duplicates, duplicates, similarity
from medtune.data.duplicates import Fingerprint, Setting

RNG = np.random.default_rng(5)


def picture(seed: int, size: int = 48) -> Image.Image:
    """A smooth random grey picture (6 x 6 noise, bicubic): two of them differ a lot."""
    cells = np.random.default_rng(seed).integers(0, 256, (6, 6), dtype=np.uint8)
    return Image.fromarray(cells).resize((size, size), Image.BICUBIC)


def parser(off_flag: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tool")
    dataset_duplicates.add_arguments(p, off_flag=off_flag, off_help="no duplicates")
    return p


def test_setting_words() -> None:
    # the tools' report words and the cache folder key, with and without accepted large groups
    assert Setting().label == "<= 36 bits, similarity >= 0.94"
    assert Setting(3, 0.5, True).label == "<= 3 bits, similarity >= 0.5, large groups accepted"
    assert Setting().key == "b36-s0.94-c0.8" and Setting(0, 1.0, True).key == "b0-s1-c0.8-a"


def test_flags_default_to_the_default_setting_and_say_their_ranges() -> None:
    assert dataset_duplicates.setting_from_args(parser().parse_args([])) == Setting()
    args = parser("--no-near").parse_args(
        ["--near-threshold", " 7 ", "--near-similarity", " 0.5 ", "--accept-groups", "--no-near"]
    )
    assert dataset_duplicates.setting_from_args(args) == Setting(7, 0.5, True) and args.no_near is True
    assert parser("--no-near").parse_args([]).no_near is False
    # a namespace without the accept flag (an older caller): large groups are not accepted
    older = argparse.Namespace(near_threshold=0, near_similarity=1)
    assert dataset_duplicates.setting_from_args(older) == Setting(0, 1.0)
    text = " ".join(parser("--no-near").format_help().split())
    for words in (
        "--near-threshold BITS near duplicates: hash distance in bits that proposes a pair, 0-127 (default 36)",
        "--near-similarity R near duplicates: thumbnail correlation that confirms a proposed pair, 0-1 (default 0.94)",
        "--accept-groups near duplicates: let groups of more than 10 images (or 2% of the dataset) constrain "
        "splits and folds; by default they are reported as suspicious and not used",
        "--no-near no duplicates",
    ):
        assert words in text, text
    assert "--no-near" not in " ".join(parser().format_help().split())
    # an opt-out flag given without help text has none
    bare = argparse.ArgumentParser(prog="tool")
    dataset_duplicates.add_arguments(bare, off_flag="--no-near")
    assert " ".join(bare.format_help().split()).endswith(
        "by default they are reported as suspicious and not used --no-near"
    )


@pytest.mark.parametrize("value", ["0", "1", "0.0", "1.0", " 0.25"])
def test_similarity_bounds_are_inclusive(value: str) -> None:
    args = argparse.Namespace(near_threshold="0", near_similarity=value)
    assert dataset_duplicates.setting_from_args(args).min_similarity == float(value)


@pytest.mark.parametrize("value", ["-0.001", "1.001", "nan", "x", ""])
def test_similarity_out_of_range_names_the_flag(value: str) -> None:
    with pytest.raises(cocoio.DataError) as refused:
        dataset_duplicates.setting_from_args(argparse.Namespace(near_threshold="0", near_similarity=value))
    assert str(refused.value) == f"--near-similarity {value.strip()}: expected a correlation from 0 to 1"


def test_threshold_bounds() -> None:
    assert dataset_duplicates.check_threshold(0) == 0 and dataset_duplicates.check_threshold(" 127 ") == 127
    assert dataset_duplicates.check_threshold("36") == 36
    for bad in (128, "-1", "1.5", True, "x"):
        with pytest.raises(cocoio.DataError) as refused:
            dataset_duplicates.check_threshold(bad)
        assert str(refused.value) == f"--near-threshold {bad}: expected an integer number of bits from 0 to 127"


def test_fingerprint_is_phash_dhash_and_the_grey_thumbnail(tmp_path: Path) -> None:
    import imagehash

    image = picture(1).convert("RGB")
    found = duplicates.image_fingerprint(image)
    grey = image.convert("L")
    bits = np.concatenate([imagehash.phash(grey).hash.ravel(), imagehash.dhash(grey).hash.ravel()])
    # 128 bits packed in 16 bytes: pHash first, then dHash
    assert found.bits.dtype == np.uint8 and np.array_equal(found.bits, np.packbits(bits))
    assert np.array_equal(found.thumb, similarity.thumbnail(grey))
    image.save(tmp_path / "a.png")
    from_file = duplicates.file_fingerprint(tmp_path / "a.png")
    assert np.array_equal(from_file.bits, found.bits) and np.array_equal(from_file.thumb, found.thumb)


def test_group_bound_is_ten_or_two_percent() -> None:
    assert [duplicates.group_bound(n) for n in (0, 40, 549, 550, 600, 1000)] == [10, 10, 10, 11, 12, 20]


def test_near_pairs_are_every_pair_within_the_threshold() -> None:
    hashes = RNG.integers(0, 256, (40, 16), dtype=np.uint8)
    hashes[5] = hashes[3]
    distance = np.unpackbits(hashes[:, None] ^ hashes[None], axis=2).sum(axis=2)
    threshold = int(np.sort(distance[np.triu_indices(40, 1)])[30])  # some pairs exactly at it
    expected = [(i, j) for i in range(40) for j in range(i + 1, 40) if distance[i, j] <= threshold]
    assert duplicates.near_pairs(hashes, threshold) == expected and (3, 5) in expected
    assert any(distance[i, j] == threshold for i, j in expected)
    assert duplicates.near_pairs(hashes[:1], 128) == [] and duplicates.near_pairs(hashes[:2], 128) == [(0, 1)]


def test_candidate_floor_and_threshold_are_inclusive() -> None:
    hashes = np.zeros((4, 16), dtype=np.uint8)
    hashes[1, 0] = 0b111  # 3 bits from image 0
    hashes[2, 3] = 0b1111  # 4 bits from image 0
    rows = np.zeros((4, 4), np.float32)
    rows[0], rows[1] = [1, 0, 0, 0], [0.5, np.sqrt(0.75), 0, 0]  # dot 0.5
    rows[2], rows[3] = [0.25, np.sqrt(1 - 0.0625), 0, 0], [-1, 0, 0, 0]  # dots 0.25 and -1 with image 0
    pairs = duplicates.candidate_pairs(hashes, rows, threshold=3, floor=0.5, k=3)
    # 3 bits <= 3 and dot 0.5 >= 0.5: a candidate; 4 bits or a dot under the floor: not
    assert (0, 1) in pairs and (0, 2) not in pairs and (0, 3) not in pairs
    assert (0, 2) in duplicates.candidate_pairs(hashes, rows, threshold=4, floor=0.25, k=3)
    # one image has no one to pair with
    assert duplicates.candidate_pairs(hashes[:1], rows[:1], threshold=128, floor=-1.0) == []


def test_candidates_keep_each_images_best_k_over_blocks() -> None:
    n, k = duplicates.ROW_BLOCK + 40, 3
    rows = similarity._unit_rows(RNG.normal(size=(n, 16)).astype(np.float32))
    rows[n - 1] = 0.3 * rows[n - 1]  # not flat (norm 0.3 < 0.5 counts as flat: equal to another flat one)
    rows[n - 2] = 0.3 * rows[n - 2]
    hashes = np.zeros((n, 16), dtype=np.uint8)
    pairs = set(duplicates.candidate_pairs(hashes, rows, threshold=0, floor=-1.0, k=k))
    score = rows @ rows.T
    np.fill_diagonal(score, -np.inf)
    score[n - 2, n - 1] = score[n - 1, n - 2] = 1.0  # rows under norm 0.5 count as flat: equal
    expected = {(min(i, int(j)), max(i, int(j))) for i in range(n) for j in np.argsort(-score[i])[:k]}
    # every image's k best, in both blocks of ROW_BLOCK rows, and nothing else
    assert pairs == expected


def test_union_groups_keep_keys_order_and_halve_paths() -> None:
    keys = list("abcdefghij")
    groups = duplicates.union_groups(keys, [(6, 5), (5, 1), (3, 7), (7, 4), (9, 8), (0, 7), (2, 2)])
    assert groups == [["a", "d", "e", "h"], ["b", "f", "g"], ["i", "j"]]
    assert duplicates.union_groups(keys, []) == []


class Table:
    """Pair scores from a table (0 for pairs not in it), counting what is asked."""

    def __init__(self, table: dict[tuple[int, int], float]) -> None:
        self.table, self.asked = table, 0

    def __call__(self, pairs: list[tuple[int, int]]) -> np.ndarray:
        self.asked += len(pairs)
        return np.array([self.table.get((min(p), max(p)), 0.0) for p in pairs])


def test_coherence_of_exactly_eighty_percent_merges() -> None:
    table = {(a, b): 1.0 for a in range(1, 6) for b in range(a + 1, 6)}  # a group of 5
    table |= {(0, b): 1.0 for b in range(1, 5)} | {(0, 5): 0.5}  # 0 is confirmed with 4 of its 5
    edges = sorted(table, key=lambda p: (p[0] == 0, p))
    # 4 of 5 cross pairs confirmed: 80%, enough (the cross mean 0.9 is within tightness 0.5 of 1.0)
    assert duplicates.coherent_groups(edges, Table(table), 0.9, tightness=0.5) == [[0, 1, 2, 3, 4, 5]]
    table[(0, 4)] = 0.5  # 3 of 5: refused, so 0 stays alone
    assert duplicates.coherent_groups(edges, Table(table), 0.9, tightness=0.5) == [[1, 2, 3, 4, 5]]


def test_tightness_is_met_exactly_and_measured_from_the_tighter_group() -> None:
    # {0, 1} inside at 1.0, {2, 3} inside at 0.75; across at 0.75: 0.25 below the tighter group's level
    table = {(0, 1): 1.0, (2, 3): 0.75, (0, 2): 0.75, (0, 3): 0.75, (1, 2): 0.75, (1, 3): 0.75}
    edges = [(0, 1), (2, 3), (0, 2)]
    assert duplicates.coherent_groups(edges, Table(table), 0.5, tightness=0.25) == [[0, 1, 2, 3]]
    assert duplicates.coherent_groups(edges, Table(table), 0.5, tightness=0.24) == [[0, 1], [2, 3]]
    # the default tightness is the module's TIGHTNESS
    assert duplicates.coherent_groups(edges, Table(table), 0.5) == [[0, 1], [2, 3]]


def test_a_grown_group_keeps_the_mean_of_all_its_pairs() -> None:
    # {0, 1} at 1.0; 2 joins at 0.75 (exactly 0.25 below); {0, 1, 2} then has the mean of its three pairs,
    # 0.833, not its first pair's 1.0: 3 joins across at 0.6 within 0.25 of it, not within 0.2
    table = {(0, 1): 1.0, (0, 2): 0.75, (1, 2): 0.75, (0, 3): 0.6, (1, 3): 0.6, (2, 3): 0.6}
    edges = [(0, 1), (1, 2), (2, 3)]
    assert duplicates.coherent_groups(edges, Table(table), 0.5, tightness=0.25) == [[0, 1, 2, 3]]
    table[(0, 2)] = table[(1, 2)] = 0.8
    assert duplicates.coherent_groups(edges, Table(table), 0.5, tightness=0.2) == [[0, 1, 2]]


def test_a_refused_merge_is_not_scored_again() -> None:
    table = {(0, 1): 1.0, (2, 3): 1.0, (0, 2): 1.0}  # {0,1} and {2,3}: 1 of 4 across confirmed
    scores = Table(table)
    edges = [(0, 1), (2, 3), (0, 2), (1, 2), (0, 3)]
    assert duplicates.coherent_groups(edges, scores, 0.9) == [[0, 1], [2, 3]]
    # two single pairs (1 + 1) and one refused cross of 4 pairs: the later edges between them cost nothing
    assert scores.asked == 6
    # after a group grows, the same two groups are tried again (their sizes changed)
    table2 = {(0, 1): 1.0, (2, 3): 1.0, (0, 2): 1.0, (1, 4): 1.0, (0, 4): 1.0}
    scores = Table(table2)
    assert duplicates.coherent_groups([(0, 1), (2, 3), (0, 2), (0, 4), (1, 2)], scores, 0.9) == [[0, 1, 4], [2, 3]]
    assert scores.asked == 1 + 1 + 4 + 2 + 6


def test_scores_are_cached_and_symmetric() -> None:
    thumbs = np.stack([similarity.thumbnail(picture(s)) for s in range(4)])
    scores = duplicates._Scores(thumbs, Setting(min_similarity=0.9))
    # refined from 0.06 under the threshold
    assert scores.refine_from == pytest.approx(0.84)
    first = scores([(1, 0), (2, 3)])
    assert set(scores.known) == {(0, 1), (2, 3)}
    assert np.array_equal(scores([(0, 1), (3, 2), (1, 0)]), first[[0, 1, 0]])
    expected = similarity.ThumbSet(thumbs, scores.weights).similarity([(0, 1)], 0.84)
    assert scores.known[(0, 1)] == pytest.approx(float(expected[0]))
    # fewer than 20 images: every pixel weighs 1
    assert np.array_equal(scores.weights, np.ones((similarity.THUMB, similarity.THUMB)))


def fingerprints(n: int) -> list[Fingerprint]:
    return [duplicates.image_fingerprint(picture(s)) for s in range(n)]


def test_confirmation_is_inclusive_and_the_floor_follows_a_low_threshold() -> None:
    prints = fingerprints(6)
    prints.append(prints[2])  # an exact copy: scores exactly 1
    assert duplicates.confirmed_pairs([], Setting()) == []
    # the exact copy scores exactly 1: confirmed at similarity 1 (the bound is inclusive)
    assert duplicates.confirmed_pairs(prints, Setting(0, 1.0)) == [(2, 6)]
    thumbs = np.stack([p.thumb for p in prints])
    everything = Setting(duplicates.HASH_BITS - 1, 0.0)
    scores = duplicates._Scores(thumbs, everything)
    rows = similarity.coarse_rows(thumbs, scores.weights)
    # with a similarity under RANK_FLOOR the ranking floor is that similarity: every pooled dot >= 0 counts
    expected = duplicates.candidate_pairs(np.stack([p.bits for p in prints]), rows, threshold=127, floor=0.0)
    assert duplicates._candidates(prints, everything, scores) == expected
    assert len(expected) > len(duplicates.candidate_pairs(np.stack([p.bits for p in prints]), rows, threshold=127))


def test_exact_copy_mode_groups_exact_copies_of_many() -> None:
    prints = dict(enumerate(fingerprints(8)))
    prints |= {"a": prints[1], "b": prints[1], "c": prints[6]}
    # Setting(0, 1.0): identical pictures only, each group in key order, groups sorted
    assert duplicates.near_groups(prints, Setting(0, 1.0)) == [[1, "a", "b"], [6, "c"]]
    assert duplicates.near_grouping({}, Setting()) == duplicates.Grouping([], [], [])


def test_group_bound_itself_is_trusted() -> None:
    base = fingerprints(30)
    prints = dict(enumerate(base)) | {f"copy{k}": base[0] for k in range(9)}  # a group of exactly 10
    found = duplicates.near_grouping(prints, Setting(0, 1.0))
    assert [len(g) for g in found.groups] == [10] and found.suspicious == []
    prints["copy9"] = base[0]  # 11: over the bound
    found = duplicates.near_grouping(prints, Setting(0, 1.0))
    assert found.groups == [] and [len(g) for g in found.suspicious] == [11]


def write_split(folder: Path, name: str, ids: list[int], seeds: list[int], extra: list | None = None) -> Path:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images = []
    for i, s in zip(ids, seeds):
        picture(s).save(folder / "images" / f"{name}{i}.png")
        images.append({"id": i, "file_name": f"{name}{i}.png", "width": 48, "height": 48})
    coco = {"images": images + (extra or []), "annotations": [], "categories": [{"id": 1, "name": "a"}]}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(coco))
    return path


def test_split_grouping_tags_entries_and_skips_what_it_cannot_read(tmp_path: Path) -> None:
    bad = [
        {"id": 50, "file_name": "missing.png"},
        {"id": 51, "file_name": "../outside.png"},
        {"id": 52, "file_name": 7},
        {"file_name": "noid.png"},
        "not an entry",
    ]
    (tmp_path / "outside.png").write_bytes(b"")
    picture(0).save(tmp_path / "outside.png")  # readable, but outside the image folder: never opened
    files = {
        "train": write_split(tmp_path, "train", [1, 2, 3], [0, 1, 2], bad),
        "val": write_split(tmp_path, "val", [1, 4], [0, 3]),
    }
    dirs = {s: tmp_path / "images" for s in files}
    found = dataset_duplicates.split_grouping(files, dirs, Setting(0, 1.0))
    # train 1 and val 1 show the same picture: one group across the splits, ids tagged with the split
    assert found.groups == [
        [
            {"id": "train:1", "file_name": "train1.png", "width": 48, "height": 48, "split": "train"},
            {"id": "val:1", "file_name": "val1.png", "width": 48, "height": 48, "split": "val"},
        ]
    ]
    assert found.suspicious == [] and found.unreadable == ["missing.png", "../outside.png"]
    assert dataset_duplicates.split_groups(files, dirs, Setting(0, 1.0)) == found.groups
    assert dataset_duplicates.straddling(found.groups) == found.groups
    assert dataset_duplicates.straddling([[{"split": "val"}, {"split": "val"}]]) == []


def test_image_grouping_returns_entries(tmp_path: Path) -> None:
    path = write_split(tmp_path, "all", [1, 2, 3, 4], [0, 1, 0, 2], [{"id": 9, "file_name": "gone.png"}])
    images = json.loads(path.read_text())["images"]
    found = dataset_duplicates.image_grouping(images, tmp_path / "images", Setting(0, 1.0))
    assert found == duplicates.Grouping([[images[0], images[2]]], [], ["gone.png"])
    assert dataset_duplicates.image_groups(images, tmp_path / "images", Setting(0, 1.0)) == (
        [[images[0], images[2]]],
        ["gone.png"],
    )
    prints, unreadable = dataset_duplicates.fingerprint_images(images, tmp_path / "images")
    assert sorted(prints) == [1, 2, 3, 4] and unreadable == ["gone.png"]


def entries(n: int, start: int = 0) -> list[dict]:
    return [{"id": i, "file_name": f"{i}.png"} for i in range(start, start + n)]


def test_group_lines() -> None:
    groups = [entries(2), entries(3, 10), entries(2, 20)]
    assert dataset_duplicates.group_lines([], label="x") == []
    assert dataset_duplicates.describe(entries(2)) == "id 0 (0.png), id 1 (1.png)"
    assert dataset_duplicates.group_lines(groups, label="near", max_report=2) == [
        "near: 3 group(s), 7 images",
        "  group of 2: id 0 (0.png), id 1 (1.png)",
        "  group of 3: id 10 (10.png), id 11 (11.png), id 12 (12.png)",
        "  ... and 1 more groups",
    ]
    # 0: every group; the default shows up to 20
    assert len(dataset_duplicates.group_lines(groups, label="near", max_report=0)) == 4
    assert len(dataset_duplicates.group_lines(groups * 8, label="near")) == 1 + 20 + 1
    assert dataset_duplicates.group_lines(groups, label="near", max_report=1)[2] == "  ... and 2 more groups"


def test_suspicious_lines() -> None:
    groups = [entries(12), entries(3, 20), entries(11, 40), entries(4, 60)]
    lines = dataset_duplicates.suspicious_lines(groups, 600, max_report=2)
    assert lines == [
        "suspicious near-duplicate group of 12 images (over 12 of 600; not used for splits or folds, "
        "--accept-groups uses it): 0.png, 1.png, 2.png, ...",
        "suspicious near-duplicate group of 3 images (over 12 of 600; not used for splits or folds, "
        "--accept-groups uses it): 20.png, 21.png, 22.png",
        "  ... and 2 more suspicious groups",
    ]
    assert dataset_duplicates.suspicious_lines(groups, 600, max_report=0)[3].endswith("): 60.png, 61.png, 62.png, ...")
    assert len(dataset_duplicates.suspicious_lines(groups * 6, 600)) == 20 + 1
    assert dataset_duplicates.suspicious_lines(groups, 600, max_report=1)[1] == "  ... and 3 more suspicious groups"


def test_groups_grow_from_the_best_pairs_first() -> None:
    # white-noise thumbnails mixed so that A~B at 0.99, A~C at 0.95, B~C at 0.94 (C: a look-alike of both)
    rng = np.random.default_rng(0)
    p = rng.normal(size=(3, similarity.THUMB, similarity.THUMB))
    thumbs = [p[0], p[0] + 0.1425 * p[1], p[0] + 0.3287 * p[2]]
    bits = np.zeros(16, np.uint8)
    prints = {k: Fingerprint(bits, (100 + 20 * t).astype(np.float32)) for k, t in zip("ABC", thumbs)}
    # best first: A and B join; C is 0.045 below their level, so it stays out (weakest first would chain all three)
    assert duplicates.near_groups(prints, Setting(127, 0.9)) == [["A", "B"]]
