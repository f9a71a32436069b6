"""The cache build streams images into the file: the same file as encoding the split in memory, never half-trusted."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medtune.data import cache, folds
from medtune.data.cache import build_cache, cache_ok, cache_path, load_cache, save_tensors
from medtune.data.coco import Dataset, load_records, resolve_dataset
from medtune.data.imageio import read_image
from medtune.data.streamed import Stream
from medtune.data.tools.synth import generate

SIZE = 24  # px of the caches built here: small and not the source size (32), so images are resized


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    data = tmp_path_factory.mktemp("streaming") / "data"
    generate(data, n=12, size=32, seed=0)
    return resolve_dataset(data, cache_root=data.parent / "cache")


def in_memory(dataset: Dataset, split: str, size: int) -> dict:
    """The split encoded whole in memory, as build_cache did before it streamed (cache version 2)."""
    records = load_records(dataset, split)
    n = len(records.paths)
    images = torch.zeros((n, 3, size, size), dtype=torch.uint8)
    masks = torch.zeros((n, 1, size, size), dtype=torch.uint8)
    for i, path in enumerate(records.paths):
        img = read_image(path)
        mask = Image.fromarray(cache._mask(records.segmentations[i], img.height, img.width) * 255)
        images[i] = torch.from_numpy(cache.letterbox(img, size, Image.BILINEAR)).permute(2, 0, 1)
        masks[i, 0] = torch.from_numpy((cache.letterbox(mask, size, Image.BILINEAR) >= 128).astype(np.uint8))
    tensors = {"images": images, "masks": masks, "image_ids": torch.tensor(records.image_ids)}
    tensors["labels"] = [torch.tensor(labels, dtype=torch.long) for labels in records.labels]
    return tensors


def records(path: Path) -> dict[str, bytes]:
    """Every zip record of a torch.save file by name without the archive folder, but the random serialization id."""
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None  # every record's CRC-32 matches its bytes
        named = {info.filename.split("/", 1)[1]: archive.read(info) for info in archive.infolist()}
    return {name: data for name, data in named.items() if name != ".data/serialization_id"}


@pytest.mark.parametrize("batch", [3, 32])  # several batches with a short last one; one batch for the whole split
def test_streamed_cache_is_the_in_memory_file(
    batch: int, dataset: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache, "BATCH", batch)
    for split in ("train", "val"):
        path = build_cache(dataset, split, SIZE, tmp_path)
        reference = in_memory(dataset, split, SIZE)
        torch.save(reference, tmp_path / "reference.pt")
        # Every record holds the same bytes as torch.save of the whole tensors: pickle, storages, CRCs.
        assert records(path) == records(tmp_path / "reference.pt")
        assert cache_ok(path)
        loaded = load_cache(path)
        assert list(loaded) == ["images", "masks", "image_ids", "labels"]
        for key in ("images", "masks", "image_ids"):
            assert loaded[key].dtype == reference[key].dtype and torch.equal(loaded[key], reference[key])
        assert [t.tolist() for t in loaded["labels"]] == [t.tolist() for t in reference["labels"]]
        assert loaded["masks"].sum() > 0  # lesions made it through (not an all-zero file)


def test_save_tensors_streams_other_dtypes(tmp_path: Path) -> None:
    values = torch.arange(7 * 5, dtype=torch.float32).reshape(7, 5) / 3
    tensors = {"ids": torch.tensor([4, 5]), "values": torch.empty(7, 5), "rows": [torch.tensor([1]), torch.tensor([])]}
    batches = [{"values": values[:4].numpy()}, {"values": values[4:].numpy()}]
    path = save_tensors(tensors, tmp_path / "streamed.pt", stream=Stream(("values",), batches))
    torch.save({**tensors, "values": values}, tmp_path / "whole.pt")
    # An empty tensor in a list (a record without bytes) and float32 rows both come out as torch.save writes them.
    assert records(path) == records(tmp_path / "whole.pt")
    assert cache_ok(path) and torch.equal(load_cache(path)["values"], values)


@pytest.mark.parametrize(
    ("batches", "message"),
    [
        ([{"values": np.zeros((3, 5), np.float32)}], r"batches ended early: \{'values': '60 of 140 bytes'\}"),
        ([{"values": np.zeros((8, 5), np.float32)}], r"batches for 'values' exceed its 140 bytes"),
        ([{"other": np.zeros(1)}], r"batch entry 'other' is not a streamed key \(values\)"),
    ],
)
def test_wrong_batches_leave_no_file(batches: list, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        save_tensors({"values": torch.empty(7, 5)}, tmp_path / "bad.pt", stream=Stream(("values",), batches))
    # The temporary file is gone and nothing was written under the name.
    assert list(tmp_path.iterdir()) == []


def test_failed_build_leaves_nothing_cache_ok(
    dataset: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encode, calls = cache._encode, []

    def failing(*args: object) -> tuple:
        calls.append(1)
        if len(calls) == 4:
            raise OSError("image unreadable")
        return encode(*args)

    monkeypatch.setattr(cache, "BATCH", 2)
    monkeypatch.setattr(cache, "_encode", failing)
    with pytest.raises(OSError, match="image unreadable"):
        build_cache(dataset, "train", SIZE, tmp_path)
    # Half the images were written when it failed: no file, no sidecar, no temporary file remains.
    path = cache_path(dataset, "train", SIZE, tmp_path)
    assert not cache_ok(path) and list(path.parent.iterdir()) == []


KILLED_BUILD = """
import os, signal, sys
from pathlib import Path
from medtune.data import cache
from medtune.data.coco import resolve_dataset
encode, calls = cache._encode, []
def killed(*args):
    calls.append(1)
    if len(calls) == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    return encode(*args)
cache.BATCH, cache._encode = 2, killed
cache.build_cache(resolve_dataset(Path(sys.argv[1]), cache_root=Path(sys.argv[2])), "train", 24, Path(sys.argv[2]))
"""


@pytest.mark.e2e
def test_killed_build_is_not_trusted_and_rebuilt(dataset: Dataset, tmp_path: Path) -> None:
    data = dataset.coco_files["train"].parent
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(data), str(tmp_path)], env=env, check=False)
    assert proc.returncode == -9
    # The killed process left only its temporary file: the cache's name does not exist, so it is not trusted.
    path = cache_path(dataset, "train", SIZE, tmp_path)
    assert not cache_ok(path) and [p.name.endswith(".tmp") for p in path.parent.iterdir()] == [True]
    # The next build writes the whole file beside it.
    assert build_cache(dataset, "train", SIZE, tmp_path) == path and cache_ok(path)
    assert torch.equal(load_cache(path)["images"], in_memory(dataset, "train", SIZE)["images"])


@pytest.mark.parametrize("batch", [5, 64])  # several batches per part, the last one short; one batch per part
def test_pooled_cache_streams_the_concatenation(
    batch: int, dataset: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(folds, "BATCH", batch)
    files = [build_cache(dataset, split, SIZE, tmp_path) for split in ("train", "val")]
    pooled = folds.concat_caches(files, tmp_path / "pool.pt")
    parts = [load_cache(f) for f in files]
    joined = {key: torch.cat([p[key] for p in parts]) for key in ("images", "masks", "image_ids")}
    joined["labels"] = [t for p in parts for t in p["labels"]]
    torch.save(joined, tmp_path / "reference.pt")
    # Record for record what torch.save of the concatenated tensors writes, and trusted as a cache.
    assert records(pooled) == records(tmp_path / "reference.pt") and cache_ok(pooled)
    # A segmenter's masks file (probs, sources) pools the same way.
    masks = []
    for i, n in enumerate(len(p["images"]) for p in parts):
        probs = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8)
        masks.append(save_tensors({"probs": probs, "sources": torch.full((n,), i)}, tmp_path / f"masks{i}.pt"))
    pooled_masks = load_cache(folds.concat_caches(masks, tmp_path / "pool-masks.pt"))
    for key in ("probs", "sources"):
        assert torch.equal(pooled_masks[key], torch.cat([load_cache(m)[key] for m in masks]))
