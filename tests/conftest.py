"""Shared fixtures: tiny synthetic datasets, workspaces for the real CLIs, and the session's shared launches."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers import CLS_ARGS, SEG_ARGS, Workspace, tail

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` run only where CUDA is available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 synthetic images at 32 px (train 30 / val 9 / test 9), generated once per session."""
    from medtune.data.synth import generate

    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, n=48, size=32, seed=0)
    return out


@pytest.fixture(scope="session")
def task_caches(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Caches of the session's synthetic set at 32 px, with ground-truth masks as a segmenter's output."""
    from medtune.data.cache import build_cache, load_cache
    from medtune.data.coco import resolve_dataset

    root = tmp_path_factory.mktemp("cache")
    dataset = resolve_dataset(synth_dir, cache_root=root)
    files = {s: str(build_cache(dataset, s, 32, root)) for s in ("train", "val", "test")}
    preds = {}
    for split, path in files.items():  # ground-truth masks stand in for a segmenter's output
        preds[split] = str(root / f"pred-{split}.pt")
        torch.save({"probs": load_cache(path)["masks"] * 255}, preds[split])
    return {"caches": files, "pred_masks": preds, "num_classes": dataset.num_classes}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """A store of the module's own (its tests may depend on their order in the module)."""
    ws = Workspace(tmp_path_factory.mktemp("workspace"))
    yield ws
    shutil.rmtree(ws.root / "mlruns", ignore_errors=True)  # logged models, beside mlflow.db


@pytest.fixture(autouse=True)
def _drop_ray_results(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test on the module's or the session's workspace, delete its Ray results.

    Every trial keeps its best and its latest checkpoint, 128 MiB each for resnet18: kept for the
    whole module they added up to gigabytes (a suite run left 6 GB under the pytest temp folder).
    No test reads another test's Ray results; MLflow runs and registered models stay.
    """
    yield
    for name in ("workspace", "shared_workspace"):
        ws = request.node.funcargs.get(name)
        if isinstance(ws, Workspace):
            shutil.rmtree(ws.root / "runs", ignore_errors=True)


@pytest.fixture(scope="session")
def shared_workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """One store for the session's shared launches on ``synth_dir`` (see ``seg_launch`` and the others).

    Tests that read these launches must not change them; a test that needs its own runs uses another
    experiment name in this store, or the module's ``workspace``.
    """
    ws = Workspace(tmp_path_factory.mktemp("shared"))
    yield ws
    shutil.rmtree(ws.root / "mlruns", ignore_errors=True)


class SharedLaunch(subprocess.CompletedProcess):
    """A shared launch's result and what it left in its Ray storage folder (``runs/``), which is deleted
    right after the launch: ``ray_files`` lists its files relative to ``runs/``, ``ray_bytes`` their size."""

    ray_files: list[str]
    ray_bytes: int


def _shared_launch(ws: Workspace, *args: str) -> SharedLaunch:
    done = ws.launch(*args)
    result = SharedLaunch(done.args, done.returncode, done.stdout, done.stderr)
    files = [f for f in (ws.root / "runs").rglob("*") if f.is_file()]
    result.ray_files = sorted(str(f.relative_to(ws.root / "runs")) for f in files)
    result.ray_bytes = sum(f.stat().st_size for f in files)
    shutil.rmtree(ws.root / "runs", ignore_errors=True)  # what a launch keeps there is nobody's input
    assert result.returncode == 0, tail(result)
    return result


@pytest.fixture(scope="session")
def seg_launch(shared_workspace: Workspace, synth_dir: Path) -> SharedLaunch:
    """``segmentation --smoke --folds 2`` (2 trials, at most 2 epochs, 2 folds each): the dataset's first
    segmenter, its champion (the fold ensemble), whose fold models give ``masked_launch`` out-of-fold masks."""
    return _shared_launch(shared_workspace, *SEG_ARGS, "--data", str(synth_dir))


@pytest.fixture(scope="session")
def masked_launch(
    seg_launch: subprocess.CompletedProcess, shared_workspace: Workspace, synth_dir: Path
) -> SharedLaunch:
    """``masked_cls --smoke --folds 2`` on the (out-of-fold) masks of ``seg_launch``'s champion."""
    return _shared_launch(
        shared_workspace, "--space", "masked_cls", "--smoke", "--folds", "2", "--data", str(synth_dir)
    )


@pytest.fixture(scope="session")
def cls_launch(shared_workspace: Workspace, synth_dir: Path) -> SharedLaunch:
    """``whole_cls --smoke`` (2 trials, at most 2 epochs) with ``CLS_ARGS``, experiment ``whole_cls``."""
    return _shared_launch(shared_workspace, *CLS_ARGS, "--data", str(synth_dir))
