"""Shared fixtures: tiny synthetic datasets, workspaces for the real CLIs, and the session's shared launches."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers import (
    CLS_ARGS,
    OTHER_ARGS,
    SEG_ARGS,
    SharedLaunch,
    Workspace,
    free_port,
    stop_processes_of,
    tail,
)
from trainables.ray_env import LOOPBACK

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# One intra-op thread per test process: two xdist processes and the launches they start share 2 cores, and
# a second torch thread per process oversubscribes them (a test retraining a classifier 4 times took 9.0 s
# with torch's default 2 threads beside two busy processes, 5.0 s with 1; in the suite, 48 s against 2.5 s
# alone). Launched CLIs get OMP_NUM_THREADS=1 for the same reason (tests/helpers.py).
torch.set_num_threads(1)


SHARED_GROUP = "shared_launches"


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (its hook is not trylast)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` run only where CUDA is available; each test joins an xdist group.

    ``./test.sh`` runs the suite on 2 processes (pytest-xdist, ``--dist loadgroup``), a group never
    split between them: every test reading the session's shared launches is in one group (so each
    launch runs once, in one process), every other module is a group of its own (module-scoped
    workspaces and tests that depend on their order in the module stay together).
    """
    skip = None if torch.cuda.is_available() else pytest.mark.skip(reason="needs a CUDA GPU")
    groups, rank = {}, {}
    for item in items:
        if skip and "gpu" in item.keywords:
            item.add_marker(skip)
        shared = "shared_workspace" in getattr(item, "fixturenames", ())
        if shared:  # reads the session's shared launches: end to end by definition
            item.add_marker(pytest.mark.e2e)
        group = groups[item] = SHARED_GROUP if shared else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))
        weight = 0 if shared else 1 if "slow" in item.keywords else 2 if "e2e" in item.keywords else 3
        rank[group] = min(rank.get(group, 3), weight)
    # The longest groups first (the shared launches, then modules with slow tests, then other end-to-end
    # ones), the fast modules last: they fill the end of the run evenly on both processes. xdist's own
    # order (most tests first, turned off in pytest_configure) left a 2-minute module for the end.
    items.sort(key=lambda item: rank[groups[item]])  # stable: each group keeps its order


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: keep the order set above
        config.option.loadscopereorder = False


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 synthetic images at 32 px (train 30 / val 9 / test 9), generated once per session."""
    from medtune.data.tools.synth import generate

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


@pytest.fixture(scope="session")
def ray_head() -> Iterator[str]:
    """The address of a Ray head node of this test process's own, for the launches that join it (``--address``).

    A launch that starts its own local cluster pays Ray's start and stop each time: about 4 s of CPU and
    5 s of wall time on 2 cores, of the 27 s of CPU a one-trial launch costs (2026-12-07: 21.5 s wall and
    23 s of CPU joined, against 26.7 s and 27 s alone). The session's shared launches and the modules
    marked ``shared_ray`` join this head; the others (the pipeline test, resume, faults, closed doors,
    several nodes, the wheel) start their own cluster as a user's launch does. Four logical CPUs (the
    session's three first launches, started together, each had a 2-CPU cluster of its own before: with two
    their trials queued, and their set-up took 91 s instead of 69 s), no GPU, on
    loopback, without token authentication (like every test cluster: ``RAY_AUTH_MODE`` above), in a
    short temporary folder (Ray's socket paths must stay under 108 characters). Ended with its own
    processes only (``stop_processes_of``), never ``ray stop``.
    """
    folder = Path(tempfile.mkdtemp(prefix="medtune-ray-", dir="/tmp"))
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", **LOOPBACK}
    ray = str(Path(sys.executable).parent / "ray")
    cmd = [ray, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=4", "--num-gpus=0"]
    cmd += ["--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={folder}"]
    cmd += ["--object-store-memory=300000000"]
    try:
        started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        yield f"127.0.0.1:{port}"
    finally:
        stop_processes_of(folder)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Workspace]:
    """A store of the module's own (its tests may depend on their order in the module); its launches join
    the process's Ray head when the module is marked ``shared_ray``."""
    joined = request.node.get_closest_marker("shared_ray") is not None
    ws = Workspace(tmp_path_factory.mktemp("workspace"), request.getfixturevalue("ray_head") if joined else None)
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
def shared_workspace(tmp_path_factory: pytest.TempPathFactory, ray_head: str) -> Iterator[Workspace]:
    """One store for the session's shared launches on ``synth_dir`` (see ``seg_launch`` and the others).

    Tests that read these launches must not change them; a test that needs its own runs uses another
    experiment name in this store, or the module's ``workspace``.
    """
    ws = Workspace(tmp_path_factory.mktemp("shared"), ray_head)
    yield ws
    shutil.rmtree(ws.root / "mlruns", ignore_errors=True)


def _collect(ws: Workspace, done: subprocess.CompletedProcess, experiment: str | None = None) -> SharedLaunch:
    """``done`` as a ``SharedLaunch``; its Ray folder (``runs/<experiment>-<time>``, or all of ``runs/``)
    is listed, then deleted: what a launch keeps there is nobody's input."""
    result = SharedLaunch(done.args, done.returncode, done.stdout, done.stderr)
    runs = ws.root / "runs"
    folders = [f for f in runs.glob(f"{experiment}-*")] if experiment else [runs]
    files = [f for folder in folders for f in folder.rglob("*") if f.is_file()]
    result.ray_files = sorted(str(f.relative_to(runs)) for f in files)
    result.ray_bytes = sum(f.stat().st_size for f in files)
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    assert result.returncode == 0, tail(result)
    return result


def _shared_launch(ws: Workspace, *args: str) -> SharedLaunch:
    return _collect(ws, ws.launch(*args))


@pytest.fixture(scope="session")
def second_synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another 48-image synthetic set (seed 1): a second dataset, with its own fingerprint."""
    from medtune.data.tools.synth import generate

    out = tmp_path_factory.mktemp("synth2") / "data"
    generate(out, n=48, size=32, seed=1)
    return out


@pytest.fixture(scope="session")
def first_launches(shared_workspace: Workspace, synth_dir: Path, second_synth_dir: Path) -> dict[str, SharedLaunch]:
    """Three launches started at the same moment on the fresh shared store, as a lab runs them: the
    segmentation search (``SEG_ARGS``) and the whole_cls search (``CLS_ARGS``) on ``synth_dir``, and
    ``OTHER_ARGS`` (experiment ``other_data``) on ``second_synth_dir``. Keyed by experiment name.

    Each is checked to have finished (exit 0); tests/tracking_tests/test_store_concurrency.py checks that none lost
    a metric. They create the store, its tables and the datasets' caches together.
    """
    ws = shared_workspace
    argv = {
        "segmentation": (*SEG_ARGS, "--data", str(synth_dir)),
        "whole_cls": (*CLS_ARGS, "--data", str(synth_dir)),
        "other_data": (*OTHER_ARGS, "--data", str(second_synth_dir)),
    }
    logs = {name: (ws.root / f"{name}.out", ws.root / f"{name}.err") for name in argv}
    procs = {name: ws.start_launch(*args, log=logs[name][0], err=logs[name][1]) for name, args in argv.items()}
    launches = {}
    for name, proc in procs.items():
        try:
            code = proc.wait(timeout=900)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
        out, err = (path.read_text() for path in logs[name])
        launches[name] = _collect(ws, subprocess.CompletedProcess(proc.args, code, out, err), name)
    return launches


@pytest.fixture(scope="session")
def seg_launch(first_launches: dict[str, SharedLaunch]) -> SharedLaunch:
    """``segmentation --smoke --folds 2`` (2 trials, at most 2 epochs, 2 folds each): the dataset's first
    segmenter, its champion (the fold ensemble), whose fold models give ``masked_launch`` out-of-fold masks."""
    return first_launches["segmentation"]


@pytest.fixture(scope="session")
def masked_launch(
    seg_launch: subprocess.CompletedProcess, shared_workspace: Workspace, synth_dir: Path
) -> SharedLaunch:
    """``masked_cls --smoke --folds 2`` on the (out-of-fold) masks of ``seg_launch``'s champion."""
    return _shared_launch(
        shared_workspace, "--space", "masked_cls", "--smoke", "--folds", "2", "--data", str(synth_dir)
    )


@pytest.fixture(scope="session")
def cls_launch(first_launches: dict[str, SharedLaunch]) -> SharedLaunch:
    """``whole_cls --smoke`` (2 trials, at most 2 epochs) with ``CLS_ARGS``, experiment ``whole_cls``."""
    return first_launches["whole_cls"]


@pytest.fixture(scope="session")
def repro_launch(cls_launch: SharedLaunch, shared_workspace: Workspace, synth_dir: Path) -> SharedLaunch:
    """``CLS_ARGS`` again (experiment ``repro``), the winner then retrained with a second seed
    (``--repeats 2``): its search must repeat ``cls_launch``'s, and its test split rests on 2 seeds."""
    return _shared_launch(
        shared_workspace, *CLS_ARGS, "--repeats", "2", "--data", str(synth_dir), "--experiment", "repro"
    )
