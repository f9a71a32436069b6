"""Shared test helpers (no test module imports another): contract configurations, one-step fits, and a
runner for the real ``launch.py`` / ``analyze.py`` in a temporary store."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
from mlflow.tracking import MlflowClient

from medtune.engine.build import build_datamodule, build_system
from medtune.tasks import TASKS
from medtune.tracking.store import LAUNCH_TAG, PARENT_TAG
from trainables.ray_env import LOOPBACK

PROJECT_DIR = Path(__file__).resolve().parent.parent
BASE = {"data.image_size": 32, "data.batch_size": 4, "train.lr": 1e-3}
TASK_CONFIGS = {
    "segmentation": {"model.name": "unet", "model.width": 4, "model.depth": 2, "loss.name": "bce_dice"},
    "classification": {"model.name": "resnet18", "loss.name": "ce"},
    "masked_classification": {"model.name": "resnet18", "loss.name": "ce", "data.mask_mode": "soft"},
    "saliency_classification": {"model.name": "resnet18", "loss.name": "ce", "train.ce_weight": 0.5},
    "multilabel_classification": {"model.name": "resnet18", "loss.name": "bce", "data.sampler": "least_sampled_first"},
}
# The metric each task's spaces optimise; every other task reports val/balanced_acc.
OBJECTIVES = {"segmentation": "val/iou", "multilabel_classification": "val/challenge_score"}
# The session's shared whole_cls launch (conftest ``cls_launch``): seeded, one trial at a time, so that a
# second launch with the same arguments must reproduce it. Its --set repeats the smoke block's batch size
# (nothing changes) so that the parent run records an override (tests/config_tests/test_overrides.py).
CLS_ARGS = ("--space", "whole_cls", "--smoke", "--seed", "7", "--max-concurrent", "1", "--set", "data.batch_size=8")
# The session's shared segmentation launch (conftest ``seg_launch``): cross-validated, 2 folds.
SEG_ARGS = ("--space", "segmentation", "--smoke", "--folds", "2")
# The third launch started with those two (conftest ``first_launches``): one trial on a second dataset.
OTHER_ARGS = (
    "--space",
    "whole_cls",
    "--smoke",
    "--experiment",
    "other_data",
    "--num-samples",
    "1",
    "--max-epochs",
    "1",
)


def build_one(task: str, config: dict, caches: dict, *, epochs: int = 2) -> tuple[pl.LightningModule, object]:
    """The task's system and DataModule on the session's caches (``task_caches``), as a trial builds them."""
    system = build_system(task, config, num_classes=caches["num_classes"], max_epochs=epochs)
    pred = caches["pred_masks"] if TASKS[task].needs_segmenter else None
    return system, build_datamodule(config, caches=caches["caches"], pred_masks=pred)


def fit_one_step(task: str, config: dict, caches: dict) -> pl.Trainer:
    """One training and one validation batch (``fast_dev_run``) on the CPU."""
    system, data = build_one(task, config, caches)
    trainer = pl.Trainer(
        fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(system, datamodule=data)
    return trainer


def runs_of(client: MlflowClient, experiment: str) -> tuple[list, list]:
    """An experiment's launch (parent) runs and trial (child) runs."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get(LAUNCH_TAG) == "true"], [r for r in runs if PARENT_TAG in r.data.tags]


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_processes_of(folder: Path, timeout: float = 5.0) -> int:
    """End the processes whose command line names ``folder`` and all their descendants (a Ray head's
    gcs_server, raylet, dashboard, monitors, and the agents and workers they started): SIGTERM, then
    SIGKILL what is left after ``timeout`` seconds. Only those: never ``ray stop``, which ends every
    Ray process of the user. Returns how many were signalled."""
    parents, roots = {}, []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if int(entry.name) == os.getpid():
                continue
            if str(folder) in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                roots.append(int(entry.name))
        except (OSError, IndexError, ValueError):  # a process that ended meanwhile
            continue
    family, grown = set(roots), True
    while grown:
        more = {pid for pid, parent in parents.items() if parent in family} - family
        family |= more
        grown = bool(more)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in family:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.time() + timeout
        while time.time() < deadline and any(_alive(pid) for pid in family):
            time.sleep(0.2)
    return len(family)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent to reap it does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def tail(result: subprocess.CompletedProcess, chars: int = 3000) -> str:
    """The end of a CLI's stdout and stderr, for an assert's message."""
    return result.stdout[-chars:] + result.stderr[-chars:]


class SharedLaunch(subprocess.CompletedProcess):
    """A shared launch's result and what it left in its Ray storage folder (``runs/``), which is deleted
    right after the launch: ``ray_files`` lists its files relative to ``runs/``, ``ray_bytes`` their size."""

    ray_files: list[str]
    ray_bytes: int


class Workspace:
    """A temporary MLflow store, Ray storage and cache, and a way to run the real CLIs in it."""

    def __init__(self, root: Path, ray_address: str | None = None) -> None:
        self.root = root
        self.tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
        # A running Ray head the launches join (``--address``; conftest ``ray_head``), else each starts its own.
        self.ray_address = ray_address

    def launch(self, *args: str, timeout: int = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return self._run(["launch.py", *args, *self._common()], timeout, env)

    def start_launch(
        self, *args: str, log: Path, err: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        """``launch.py`` in the background, in its own process group, stdout to ``log`` and stderr to
        ``err`` [``log`` too], with ``env`` added to the environment.

        Files, not pipes: a pipe nobody reads blocks the launcher once it holds 64 KiB.
        """
        with log.open("w") as out, (err or log).open("a") as errors:
            return subprocess.Popen(
                [sys.executable, "launch.py", *args, *self._common()],
                cwd=PROJECT_DIR,
                env=self._env(env),
                stdout=out,
                stderr=errors if err else subprocess.STDOUT,
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
            *(["--address", self.ray_address] if self.ray_address else []),
        ]

    def _env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        # One torch thread in the launch's driver unless the caller says otherwise (tests/conftest.py says why);
        # the trials set their own (--cpus-per-trial).
        env = {"OMP_NUM_THREADS": "1", **os.environ}
        if self.ray_address:  # the head runs on loopback (conftest ``ray_head``): so must the joining driver's node
            env.update(LOOPBACK)
        return {**env, "RAY_AUTH_MODE": "disabled", "PYTHONWARNINGS": "ignore", **(extra or {})}

    def _run(self, argv: list[str], timeout: int, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *argv],
            cwd=PROJECT_DIR,
            env=self._env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
