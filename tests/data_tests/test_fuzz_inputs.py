"""Generated bad input: mutated COCO files and space YAMLs give success or one project user error, never a crash.

Each example mutates a valid dataset or space (dropped, duplicated and retyped keys, bad ids, polygons out of
range or self-intersecting, ``../`` and absolute file names, huge values, non-UTF-8 bytes, empty choices,
reversed ranges, conditions on absent keys, bad ``cv`` blocks) and drives the validation layer in-process,
as launch.py and ``python -m medtune.data check`` do. A user error (what launch.py turns into exit 2) must
name the file; any other exception fails the test with hypothesis's minimal example.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from PIL import Image

from medtune.config.options import LaunchOptions
from medtune.config.spaces import load_space
from medtune.data.__main__ import main as data_main
from medtune.data.coco import SPLITS, load_records, resolve_dataset
from medtune.prepare.inputs import USER_ERRORS, check_dataset, load_and_override
from medtune.tracking.store import default_tracking_uri, sqlite_file

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "medtune-hypothesis")  # its caches: not in the checkout
EXAMPLES = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,  # the same examples on every run: the suite must not fail by chance
    database=None,  # no .hypothesis/ folder in the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SIZE = 16  # image side in pixels

NAMES = [
    "",
    "img0.png",
    "../img0.png",
    "/etc/passwd",
    "C:\\x.png",
    "..\\img0.png",
    "a\x00b.png",
    "a\nb.png",
    "ü.png",
    "x" * 300,
]
WEIRD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(NAMES),
    st.text(max_size=8),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.sampled_from(["counts", "size", "id"]), st.integers(-3, 40), max_size=2),
)
POLYGONS = st.one_of(
    st.lists(st.floats(-1e12, 1e12), max_size=12),  # out of range, odd or short
    st.just([0, 0, 12, 12, 12, 0, 0, 12]),  # self-intersecting bow tie
    st.just([0, 0, 1, 1, 2, 2]),  # collinear: zero area
    st.lists(WEIRD, max_size=8),
)
COCO_KEYS = ["id", "file_name", "width", "height", "image_id", "category_id", "segmentation", "area", "name"]
COCO_MUTATION = st.one_of(
    st.tuples(st.just("drop"), st.sampled_from(["images", "annotations", "categories"]), st.integers(0, 5),
              st.sampled_from(COCO_KEYS)),
    st.tuples(st.just("set"), st.sampled_from(["images", "annotations", "categories"]), st.integers(0, 5),
              st.sampled_from(COCO_KEYS), WEIRD),
    st.tuples(st.just("set"), st.just("images"), st.integers(0, 5), st.just("file_name"), st.sampled_from(NAMES)),
    st.tuples(st.just("dup"), st.sampled_from(["images", "annotations", "categories"]), st.integers(0, 5)),
    st.tuples(st.just("set"), st.just("annotations"), st.integers(0, 5), st.just("segmentation"),
              st.lists(POLYGONS, max_size=3)),
    st.tuples(st.just("top"), st.sampled_from(["images", "annotations", "categories", "info"]), WEIRD),
    st.tuples(st.just("top"), st.just("info"), st.fixed_dictionaries({"images_dir": WEIRD})),
    st.tuples(st.just("bytes"), st.sampled_from([b"\xff\xfe{}", b'{"images": [', b"[]", b"null", b"\x00" * 8])),
)  # fmt: skip


def valid_coco() -> dict:
    """Three images, one polygon annotation each, two categories: what ``check`` passes."""
    images = [{"id": i + 1, "file_name": f"img{i}.png", "width": SIZE, "height": SIZE} for i in range(3)]
    annotations = [
        {"id": i + 1, "image_id": i + 1, "category_id": 1 + i % 2, "segmentation": [[2, 2, 10, 2, 10, 10]], "area": 32}
        for i in range(3)
    ]
    return {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }


def mutate_coco(coco: dict, mutation: tuple) -> dict | bytes:
    """``coco`` with one mutation applied (entries are picked modulo their count), or raw bytes for a file."""
    kind, *args = mutation
    if kind == "bytes":
        return args[0]
    if kind == "top":
        coco[args[0]] = args[1]
        return coco
    entries = coco.get(args[0])
    if not isinstance(entries, list) or not entries:
        return coco
    index = args[1] % len(entries)
    entry = entries[index]
    if kind == "dup":
        entries.append(copy.deepcopy(entry))
    elif isinstance(entry, dict) and kind == "drop":
        entry.pop(args[2], None)
    elif isinstance(entry, dict):
        entry[args[2]] = args[3]
    return coco


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz") / "data"
    (folder / "images").mkdir(parents=True)
    for i in range(3):  # distinct pictures: no duplicate-content reports on the valid set
        Image.new("L", (SIZE, SIZE), color=60 * i).save(folder / "images" / f"img{i}.png")
    return folder


def names_file(message: str, *paths: Path) -> bool:
    return any(str(path) in message for path in paths)


def store_state() -> tuple:
    """What the default MLflow store file looks like (absent or its size and time): validation must not touch it."""
    path = sqlite_file(default_tracking_uri())
    return (path.stat().st_size, path.stat().st_mtime_ns) if path.is_file() else None


@pytest.mark.e2e
@given(split=st.sampled_from(SPLITS), mutations=st.lists(COCO_MUTATION, min_size=1, max_size=3))
@example(split="val", mutations=[("drop", "categories", 0, "id")])  # crashed coco.resolve_dataset
@example(split="train", mutations=[("set", "images", 0, "id", [])])  # crashed check.check_coco
@example(split="train", mutations=[("set", "annotations", 0, "segmentation", {"counts": 31, "size": 14})])
@example(split="train", mutations=[("set", "images", 0, "file_name", "a\nb.png")])  # a line break in a message
@EXAMPLES
def test_mutated_coco_gives_success_or_one_user_error(dataset_dir: Path, split: str, mutations: list) -> None:
    store = store_state()
    for name in SPLITS:
        content: dict | bytes = valid_coco()
        for mutation in mutations if name == split else []:
            content = mutate_coco(content, mutation) if isinstance(content, dict) else content
        raw = content if isinstance(content, bytes) else json.dumps(content).encode()
        (dataset_dir / f"{name}.json").write_bytes(raw)
    target = dataset_dir / f"{split}.json"
    try:
        dataset = resolve_dataset(dataset_dir, cache_root=dataset_dir / "cache")
        check_dataset(dataset)
        for name in SPLITS:  # what prepare reads next, once the checks passed
            load_records(dataset, name)
    except USER_ERRORS as err:
        first, *details = str(err).splitlines()
        # One line naming the file; check_dataset's summary alone adds lines, one per problem, each naming its file.
        assert names_file(first, target, dataset_dir), str(err)
        assert all(line.startswith(str(dataset_dir)) for line in details), str(err)
    err_out = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err_out):
        code = data_main(["check", "--coco", str(target)])
    # check: 0 clean, 1 problems, 2 bad input as one "error:" line naming the file.
    assert code in (0, 1, 2)
    if code == 2:
        assert err_out.getvalue().count("\n") == 1 and err_out.getvalue().startswith("error: "), err_out.getvalue()
        assert names_file(err_out.getvalue(), target), err_out.getvalue()
    assert store_state() == store  # nothing written to MLflow


GOOD_SPACE = {
    "task": "segmentation",
    "metric": "val/iou",
    "mode": "max",
    "fixed": {"data.image_size": 32},
    "params": {
        "model.name": {"choice": ["unet", "deeplabv3_mobilenet_v3_large"]},
        "model.width": {"int": [4, 8], "when": {"model.name": "unet"}},
        "loss.name": {"choice": ["bce"]},
        "train.lr": {"loguniform": [1.0e-4, 1.0e-2]},
    },
    "budget": {"num_samples": 2, "max_epochs": 2},
    "smoke": {"budget": {"num_samples": 1}},
}
SPACE_PATHS = [
    ("task",), ("metric",), ("mode",), ("search",), ("fixed",), ("params",), ("budget",), ("cv",), ("smoke",),
    ("colour",), ("cv", "folds"), ("cv", "k"), ("budget", "num_samples"), ("budget", "reduction_factor"),
    ("budget", "grace_period"), ("budget", "epochs"), ("fixed", "data.image_size"), ("fixed", "train.nope"),
    ("fixed", 1), ("params", "model.name"), ("params", "model.name", "choice"), ("params", "model.width", "int"),
    ("params", "model.width", "when"), ("params", "model.width", "when", "model.name"),
    ("params", "model.width", "when", "model.absent"), ("params", "train.lr", "loguniform"),
    ("params", "train.lr", "uniform"), ("params", "train.lr", "gaussian"), ("params", "loss.name", "choice"),
    ("params", "data.image_size"), ("params", 7), ("smoke", "budget"), ("smoke", "fixed"), ("smoke", "params"),
    ("smoke", "budget", "num_samples"), ("smoke", "cv"),
]  # fmt: skip
SPACE_VALUES = st.one_of(
    WEIRD,
    st.sampled_from(["grid", "tpe", "min", "val/dice", "classification", "unet", "bce"]),
    st.sampled_from([[], [1, 0], [0, 1], [0.0, 1e-3], [1e-2, 1e-4], [3, 2.5], [[1]], ["unet", "unet"], [None]]),
    st.sampled_from([{}, {"folds": 1}, {"folds": "5"}, {"folds": 2.5}, {"folds": True}, {"folds": 3, "x": 1}]),
    st.sampled_from([{"choice": []}, {"uniform": [2, 1]}, {"int": [1, 3], "when": {"model.absent": 1}}]),
    st.sampled_from([{"choice": [1], "when": []}, {"choice": ["unet"], "uniform": [0, 1]}, {"when": {}}]),
)
SPACE_MUTATION = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(SPACE_PATHS), SPACE_VALUES),
    st.tuples(st.just("drop"), st.sampled_from(SPACE_PATHS)),
    st.tuples(st.just("text"), st.sampled_from([b"\xff\xfetask: x", b"task: [unclosed", b"- a\n- b", b"7", b""])),
)
OVERRIDES = st.one_of(st.none(), st.integers(-2, 4))


def mutate_space(raw: dict, mutation: tuple) -> dict | bytes:
    """``raw`` with a value set or dropped at a key path (made where missing), or raw bytes for the file."""
    kind, *args = mutation
    if kind == "text":
        return args[0]
    *parents, last = args[0]
    node = raw
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    if kind == "drop":
        node.pop(last, None)
    else:
        node[last] = args[1]
    return raw


@given(
    mutations=st.lists(SPACE_MUTATION, min_size=1, max_size=3),
    smoke=st.booleans(),
    overrides=st.tuples(OVERRIDES, OVERRIDES, OVERRIDES),
)
@pytest.mark.e2e
@EXAMPLES
def test_mutated_space_gives_success_or_one_user_error(
    tmp_path_factory: pytest.TempPathFactory, mutations: list, smoke: bool, overrides: tuple
) -> None:
    store = store_state()
    path = tmp_path_factory.getbasetemp() / "fuzz-space.yaml"
    content: dict | bytes = copy.deepcopy(GOOD_SPACE)
    for mutation in mutations:
        content = mutate_space(content, mutation) if isinstance(content, dict) else content
    path.write_bytes(content if isinstance(content, bytes) else yaml.safe_dump(content, allow_unicode=True).encode())
    num_samples, max_epochs, repeats = overrides
    options = LaunchOptions(
        space=str(path), smoke=smoke, num_samples=num_samples, max_epochs=max_epochs, repeats=repeats
    )
    for load in (lambda: load_space(str(path), smoke=smoke), lambda: load_and_override(options)):
        try:
            load()
        except USER_ERRORS as err:
            # One line, naming the file (or the command-line flag that overrides the file's value).
            assert "\n" not in str(err), str(err)
            assert str(err).startswith((str(path), "--")), str(err)
    assert store_state() == store  # nothing written to MLflow


# Masks: generated polygons and RLEs driven through the check, the cache build and the decoder, in a
# subprocess whose address space is capped (resource.RLIMIT_AS) a few GB above what its imports mapped,
# so an attempt to allocate tens of GB (pycocotools on a NaN coordinate) fails the test, not the machine.
HEADROOM = 3 << 30  # bytes of address space the mask cases may add to the imports' (torch alone maps ~3 GB)
MASK_CASES = 300
BAD_NUMBERS = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 1e12, -1e12, 1e300, -1.0, 0, SIZE, SIZE + 0.5, 2**31, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**40), 2**40),
)
GOOD_POLYGON = [2, 2, 10, 2, 10, 10]
MASK_POLYGONS = st.one_of(
    st.lists(BAD_NUMBERS, max_size=10),
    st.tuples(st.integers(0, 5), BAD_NUMBERS).map(lambda t: GOOD_POLYGON[: t[0]] + [t[1]] + GOOD_POLYGON[t[0] + 1 :]),
    st.lists(WEIRD, max_size=6),
    st.just(GOOD_POLYGON),
)
COUNTS_CHANGES = st.one_of(
    st.none(),
    st.tuples(st.just("item"), st.integers(0, 40), st.one_of(BAD_NUMBERS, WEIRD)),  # one run replaced
    st.tuples(st.just("cut"), st.integers(1, 5)),  # runs or characters dropped from the end
    st.tuples(st.just("append"), st.integers(-5, 300)),
    st.tuples(st.just("char"), st.integers(0, 40), st.characters(min_codepoint=32, max_codepoint=200)),
    st.tuples(st.just("whole"), st.one_of(WEIRD, st.text(max_size=12), st.lists(BAD_NUMBERS, max_size=4))),
)
RLE_SIZES = st.one_of(
    st.none(),  # [height, width] of the file: right
    WEIRD,
    st.lists(st.integers(-2, 40), max_size=3),
    st.sampled_from([[SIZE, SIZE + 1], [SIZE * 2, SIZE // 2], [2**31, 2], [float(SIZE), SIZE], ["16", SIZE]]),
)


def rle_counts(rect: tuple[int, int, int, int], *, compressed: bool) -> list[int] | str:
    """Counts of a SIZE x SIZE mask holding the rectangle rows rect[0]:rect[1], columns rect[2]:rect[3]."""
    from pycocotools import mask as mask_utils

    block = np.zeros((SIZE, SIZE), dtype=np.uint8, order="F")
    block[rect[0] : rect[1], rect[2] : rect[3]] = 1
    if compressed:
        return mask_utils.encode(block)["counts"].decode()
    flat, runs, value = block.ravel(order="F"), [], 0
    for start in range(len(flat) + 1):  # run lengths of 0s then 1s, alternating, column-major
        if start == len(flat) or flat[start] != value:
            runs.append(start - sum(runs))
            value = 1 - value
    return runs


def change_counts(counts: list | str, change: tuple | None) -> object:
    """``counts`` with one change (see ``COUNTS_CHANGES``); positions are taken modulo the length."""
    if change is None:
        return counts
    kind, *args = change
    if kind == "whole":
        return args[0]
    if kind == "cut":
        return counts[: max(0, len(counts) - args[0])]
    if kind == "append":
        return counts + ([args[0]] if isinstance(counts, list) else str(args[0]))
    k = args[0] % max(1, len(counts))
    if kind == "item" and isinstance(counts, list) and counts:
        return counts[:k] + [args[1]] + counts[k + 1 :]
    if kind == "char" and isinstance(counts, str) and counts:
        return counts[:k] + args[1] + counts[k + 1 :]
    return counts


@st.composite
def mask_cases(draw: st.DrawFn) -> tuple[object, tuple[int, int] | None]:
    """A segmentation for image 1 (a SIZE x SIZE file) and, maybe, other height/width for its COCO entry."""
    json_size = draw(st.one_of(st.none(), st.tuples(st.integers(1, 40), st.integers(1, 40))))
    kind = draw(st.sampled_from(["polygons", "rle", "rle", "weird"]))
    if kind == "polygons":
        return draw(st.lists(MASK_POLYGONS, min_size=1, max_size=3)), json_size
    if kind == "weird":
        return draw(WEIRD), json_size
    a, b, c, d = draw(st.tuples(*[st.integers(0, SIZE)] * 4))
    counts = rle_counts((min(a, b), max(a, b), min(c, d), max(c, d)), compressed=draw(st.booleans()))
    size = draw(RLE_SIZES)
    if size is None:  # right for the COCO entry; wrong for the file when json_size is set
        size = list(json_size or (SIZE, SIZE))
    return {"size": size, "counts": change_counts(counts, draw(COUNTS_CHANGES))}, json_size


def one_line_naming(err: Exception, path: Path) -> None:
    first, *details = str(err).splitlines()
    assert str(path.parent) in first, str(err)  # the check's summary names the dataset, its lines the file
    assert all(line.startswith(str(path)) for line in details), str(err)


@given(case=mask_cases())
@example(case=([[math.nan, 1, 4, 1, 4, 4]], None))  # pycocotools allocated ~25 GB (segfault under a limit)
@example(case=([[1, 1, math.inf, 1, 4, 4]], None))
@example(case=({"size": [SIZE, SIZE], "counts": 31}, None))  # TypeError
@example(case=({"size": [SIZE, SIZE], "counts": "zz~~\x7f"}, None))  # ValueError
@example(case=({"size": [SIZE, SIZE], "counts": [-5, SIZE * SIZE + 5]}, None))  # OverflowError
@example(case=({"size": [SIZE, SIZE], "counts": [3, 2]}, None))  # silently a wrong mask
@example(case=({"size": [20, SIZE], "counts": [20 * SIZE]}, (20, SIZE)))  # the file is 16 high: crashed the cache
@settings(
    max_examples=MASK_CASES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
def mask_cases_end_in_a_cache_or_one_line(folder: Path, case: tuple) -> None:
    """Run in the capped subprocess: the check, the cache build (also past a failed check) and the decoder."""
    from medtune.data.cache import build_cache, cache_ok
    from medtune.data.cocoio import DataError
    from medtune.data.masks import segmentation_mask

    segmentation, json_size = case
    coco = valid_coco()
    coco["annotations"][0]["segmentation"] = segmentation
    if json_size:
        coco["images"][0]["height"], coco["images"][0]["width"] = json_size
    train = folder / "train.json"
    train.write_text(json.dumps(coco))
    shutil.rmtree(folder / "cache", ignore_errors=True)
    print(f"case {case!r:.300}", flush=True)  # the last line seen if the process dies
    dataset = resolve_dataset(folder, cache_root=folder / "cache")
    try:
        check_dataset(dataset)
        checked = True
    except DataError as err:
        one_line_naming(err, train)
        checked = False
    try:  # prepare builds caches after the check; a caller that skips the check gets one line too
        assert cache_ok(build_cache(dataset, "train", SIZE, folder / "cache"))
    except DataError as err:
        assert "\n" not in str(err) and str(err).startswith(str(train)), str(err)
        # Nothing written: no cache file, no temporary file.
        assert not list((folder / "cache").rglob("*.pt*")) and not list((folder / "cache").rglob("*.tmp"))
        # The check passes only what the cache builds, except an RLE sized like a COCO entry that disagrees with its file.
        assert not checked or json_size not in (None, (SIZE, SIZE)), str(err)
    try:  # the decoder itself, whatever came before it
        assert segmentation_mask(segmentation, SIZE, SIZE).shape == (SIZE, SIZE)
    except DataError as err:
        assert "\n" not in str(err), str(err)


MASK_RUNNER = """
import importlib.util, resource, sys, torch
from pathlib import Path
spec = importlib.util.spec_from_file_location("fuzz", sys.argv[1])
fuzz = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fuzz)
import medtune.data.cache, medtune.prepare.inputs  # everything imported before the cap
torch.set_num_threads(1)
mapped = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (mapped + fuzz.HEADROOM, resource.getrlimit(resource.RLIMIT_AS)[1]))
fuzz.mask_cases_end_in_a_cache_or_one_line(Path(sys.argv[2]))
"""


@pytest.mark.e2e
def test_mutated_masks_end_in_a_cache_or_one_line_under_a_memory_cap(dataset_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "data"
    shutil.copytree(dataset_dir / "images", folder / "images")
    for name in ("val", "test"):
        (folder / f"{name}.json").write_text(json.dumps(valid_coco()))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-c", MASK_RUNNER, __file__, str(folder)],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    cases = proc.stdout.count("\ncase ") + proc.stdout.startswith("case ")
    # A crash (a signal: negative code) or any exception but a one-line DataError fails, with the last case run.
    assert proc.returncode == 0, f"exit {proc.returncode}; {proc.stdout[-1500:]}\n{proc.stderr[-3000:]}"
    assert cases >= MASK_CASES, cases
