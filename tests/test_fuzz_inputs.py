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
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from PIL import Image

from medtune.data.__main__ import main as data_main
from medtune.data.coco import SPLITS, load_records, resolve_dataset
from medtune.options import LaunchOptions
from medtune.prepare import USER_ERRORS, check_dataset, load_and_override
from medtune.spaces import load_space
from medtune.tracking import default_tracking_uri, sqlite_file

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
