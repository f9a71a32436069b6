"""Cache files are verified on open: a truncated, corrupted or unverifiable file is rebuilt, a good one reused."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from medtune.data.cache import build_cache, cache_ok, load_cache, save_tensors, sidecar_path
from medtune.data.coco import Dataset, resolve_dataset
from medtune.data.tools.synth import generate


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    data = tmp_path_factory.mktemp("integrity") / "data"
    generate(data, n=12, size=32, seed=0)
    return resolve_dataset(data, cache_root=data.parent / "cache")


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])  # same size, other bytes
    path.write_bytes(bytes(data))


def drop_sidecar(path: Path) -> None:
    sidecar_path(path).unlink()  # as a cache written before checksums


@pytest.mark.parametrize(
    ("damage", "notice"),
    [
        (truncate, r"corrupt or truncated \(\d+ bytes, checksum file says \d+\)"),  # the size check
        (flip_middle, r"corrupt or truncated \(sha256 differs from its checksum file\)"),
        (drop_sidecar, r"unverifiable \(no checksum file \S+\.pt\.sha256: written before cache checksums\)"),
    ],
)
def test_damaged_cache_is_rebuilt(
    damage: Callable[[Path], None], notice: str, dataset: Dataset, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = build_cache(dataset, "train", 16, tmp_path)
    original = {k: v.clone() for k, v in load_cache(path).items() if isinstance(v, torch.Tensor)}
    capsys.readouterr()
    damage(path)
    assert not cache_ok(path)
    assert build_cache(dataset, "train", 16, tmp_path) == path
    # One line names the file and why, then the rebuilt file verifies and holds the same tensors.
    out = capsys.readouterr().out
    assert re.fullmatch(rf"\[cache\] {re.escape(str(path))}: {notice}; rebuilding\n", out), out
    assert cache_ok(path)
    rebuilt = load_cache(path)
    assert all(torch.equal(rebuilt[k], v) for k, v in original.items())
    # Rebuilt once: the next call reuses it silently.
    mtime = path.stat().st_mtime_ns
    assert build_cache(dataset, "train", 16, tmp_path) == path and path.stat().st_mtime_ns == mtime
    assert capsys.readouterr().out == ""


def test_good_cache_is_reused(dataset: Dataset, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = build_cache(dataset, "val", 16, tmp_path)
    mtime = path.stat().st_mtime_ns, sidecar_path(path).stat().st_mtime_ns
    capsys.readouterr()
    assert build_cache(dataset, "val", 16, tmp_path) == path
    # Neither the file nor its checksum was rewritten, and nothing was printed.
    assert (path.stat().st_mtime_ns, sidecar_path(path).stat().st_mtime_ns) == mtime
    assert capsys.readouterr().out == ""


def test_save_tensors_files_verify(tmp_path: Path) -> None:
    # Mask caches go through save_tensors too: each gets a checksum that cache_ok verifies.
    path = save_tensors({"probs": torch.arange(1000, dtype=torch.uint8)}, tmp_path / "masks.pt")
    assert cache_ok(path) and not cache_ok(tmp_path / "missing.pt")
    sidecar_path(path).write_text("{not json")
    assert not cache_ok(path)
