"""Shared fixtures: tiny synthetic datasets, and a runner for the real launch.py / analyze.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

PROJECT_DIR = Path(__file__).resolve().parent.parent
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


class Workspace:
    """A temporary MLflow store, Ray storage and cache, and a way to run the real CLIs in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tracking_uri = f"sqlite:///{root / 'mlflow.db'}"

    def launch(self, *args: str, timeout: int = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return self._run(["launch.py", *args, *self._common()], timeout, env)

    def start_launch(self, *args: str, log: Path) -> subprocess.Popen:
        """``launch.py`` in the background, in its own process group, stdout and stderr to ``log``.

        A file, not a pipe: a pipe nobody reads blocks the launcher once it holds 64 KiB.
        """
        with log.open("w") as out:
            return subprocess.Popen(
                [sys.executable, "launch.py", *args, *self._common()],
                cwd=PROJECT_DIR,
                env=self._env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def analyze(self, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
        return self._run(["analyze.py", *args, "--tracking-uri", self.tracking_uri], timeout)

    def _common(self) -> list[str]:
        return [
            "--tracking-uri",
            self.tracking_uri,
            "--storage-path",
            str(self.root / "runs"),
            "--cache-dir",
            str(self.root / "cache"),
        ]

    @staticmethod
    def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONWARNINGS": "ignore", **(extra or {})}

    def _run(self, argv: list[str], timeout: int, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *argv],
            cwd=PROJECT_DIR,
            env=self._env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    ws = Workspace(tmp_path_factory.mktemp("workspace"))
    yield ws
    shutil.rmtree(ws.root / "mlruns", ignore_errors=True)  # logged models, beside mlflow.db


@pytest.fixture(autouse=True)
def _drop_ray_results(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test on the module's workspace, delete its Ray results.

    Every trial keeps its best and its latest checkpoint, 128 MiB each for resnet18: kept for the
    whole module they added up to gigabytes (a suite run left 6 GB under the pytest temp folder).
    No test reads another test's Ray results; MLflow runs and registered models stay.
    """
    yield
    ws = request.node.funcargs.get("workspace")
    if isinstance(ws, Workspace):
        shutil.rmtree(ws.root / "runs", ignore_errors=True)
