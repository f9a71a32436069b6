"""What a finished launch deletes: its trials' Ray checkpoints and its trials' scratch folders.

Each trial keeps what ``--resume`` needs, its latest checkpoint with the full training state (128 MiB
for a resnet18: weights, AdamW's two tensors per weight, per fold when cross-validated), and what
publishing needs, its best checkpoint's weights (43 MiB): ``CheckpointPruner`` deletes the others,
rewrites a best that is no longer the latest as weights only (``weights_only``), and keeps only the
best's weights of a trial that ended. Once the winner is tested and logged to MLflow nobody reads
them, so a finished launch deletes them (``launch.py --keep-checkpoints`` keeps them). An
interrupted launch keeps the rest: ``--resume`` continues from the latest checkpoints.

Trials write each checkpoint into a temporary folder before Ray copies it into the experiment
folder; a trial stopped while reporting (ASHA, the end of the search) can leave that folder behind.
They make them under the launch's scratch folder (``new_scratch``: ``tempfile.mkdtemp``, a name nobody
can guess or take first, readable by its owner only), which the launch removes however it ends.

A build killed mid-write (SIGKILL, a lost machine) leaves its atomic write's temporary file
(``.<name>.<random>.tmp`` beside the cache file, ``medtune.data.cocoio.atomic_file``);
``sweep_stale`` removes those older than an hour when a launch starts.

The experiment folder may be local or in a bucket (``trainables.storage``): both are reached through
pyarrow's filesystem, as Ray reaches them.
"""

from __future__ import annotations

import fnmatch
import io
import math
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.fs
import torch
from ray import tune

from medtune.engine.crossval import FOLD_FILE
from trainables.checkpoint_policy import WEIGHTS_KEYS
from trainables.storage import Location, why
from trainables.trial import CHECKPOINT_FILE

TRIAL_PREFIX, CHECKPOINT_PREFIX = "trial_", "checkpoint_"  # Ray's layout: <experiment>/trial_*/checkpoint_<index>
SCRATCH_PREFIX = "medtune-scratch-"
STALE_TMP = ".*.tmp"  # an atomic write's temporary file (medtune.data.cocoio.atomic_file)
STALE_AFTER_S = 3600.0  # a cache write takes seconds to minutes: an hour-old temporary file is an orphan


def new_scratch(name: str) -> Path:
    """A new folder for launch ``name``'s trials' temporary checkpoint copies, in the system temp folder:
    made by ``tempfile.mkdtemp`` (a random suffix, mode 0700), so no one can predict it or create it first."""
    return Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{name}-"))


def scratch_folder(name: str) -> Path:
    """Launch ``name``'s scratch folder if one is left in the system temp folder (else the prefix, which is
    no folder): what a test or a user looks for after the launch."""
    left = sorted(Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}{name}-*"))
    return left[0] if left else Path(tempfile.gettempdir()) / f"{SCRATCH_PREFIX}{name}-"


def sweep_stale(cache_dir: Path, *, older_than_s: float = STALE_AFTER_S) -> int:
    """Delete the atomic writes' temporary files under ``cache_dir`` older than ``older_than_s`` (a build
    killed mid-write); returns how many. A younger one may belong to a build running now: it stays."""
    if not cache_dir.is_dir():
        return 0
    cutoff, removed = time.time() - older_than_s, 0
    for path in cache_dir.rglob(STALE_TMP):
        try:
            if path.is_file() and not path.is_symlink() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except OSError:  # gone meanwhile, or not ours to delete: the sweep is best effort
            continue
    return removed


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def _folders(fs: pyarrow.fs.FileSystem, path: str, prefix: str) -> list[str]:
    """The subfolders of ``path`` whose names start with ``prefix`` (none when ``path`` is missing)."""
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    return [i.path for i in infos if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith(prefix)]


def drop_checkpoints(loc: Location, scratch: Path | None = None) -> tuple[int, int]:
    """Delete the ``checkpoint_*`` folders of every trial of the launch at ``loc``, and its ``scratch``
    folder [the one ``scratch_folder`` finds]; returns (checkpoint folders, bytes freed).

    Ray's experiment state (``experiment_state-*.json``, ``tuner.pkl``) and each trial's
    ``result.json`` stay: the launch's record besides MLflow.
    """
    fs, experiment = loc.filesystem()
    try:
        folders = [c for t in _folders(fs, experiment, TRIAL_PREFIX) for c in _folders(fs, t, CHECKPOINT_PREFIX)]
    except OSError as err:  # a bucket that stopped answering: the winner is logged, the checkpoints stay
        print(f"[launch] could not list the checkpoints under {loc.ray}: {why(err)}", file=sys.stderr)
        folders = []
    freed = 0
    for folder in folders:
        files = fs.get_file_info(pyarrow.fs.FileSelector(folder, recursive=True, allow_not_found=True))
        freed += sum(f.size or 0 for f in files if f.type == pyarrow.fs.FileType.File)
        _delete(fs, folder)
    scratch = scratch if scratch is not None else scratch_folder(loc.name)
    if scratch.is_dir():
        freed += folder_bytes(scratch)
        shutil.rmtree(scratch, ignore_errors=True)
    return len(folders), freed


def _delete(fs: pyarrow.fs.FileSystem, folder: str) -> None:
    """Delete ``folder`` and what it holds; one already gone (or going) is no error."""
    try:
        fs.delete_dir(folder)
    except FileNotFoundError:
        pass
    except OSError as err:
        if isinstance(fs, pyarrow.fs.LocalFileSystem):  # a folder that changed while it was deleted: what is left
            shutil.rmtree(folder, ignore_errors=True)
        else:  # a bucket that stopped answering: the launch goes on, the folder stays, and the user is told
            print(f"[launch] could not delete {folder}: {why(err)}", file=sys.stderr)


def weights_only(fs: pyarrow.fs.FileSystem, folder: str) -> int:
    """Rewrite the Lightning checkpoint files in a trial's checkpoint ``folder`` (``CHECKPOINT_FILE``, or
    a cross-validated trial's fold files) with their ``WEIGHTS_KEYS`` only; returns the bytes freed.

    Each file is replaced whole (written beside it, then moved over it); a file that is already
    weights only is left as it is, and one that cannot be read or written stays (one line on stderr).
    """
    names = (CHECKPOINT_FILE, FOLD_FILE.format(k="*"))
    infos = fs.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
    freed = 0
    for info in infos:
        if info.type == pyarrow.fs.FileType.File and any(fnmatch.fnmatchcase(info.base_name, n) for n in names):
            freed += _rewrite_weights(fs, info)
    return freed


def _rewrite_weights(fs: pyarrow.fs.FileSystem, info: pyarrow.fs.FileInfo) -> int:
    try:
        if isinstance(fs, pyarrow.fs.LocalFileSystem):  # memory-mapped: the optimizer's bytes are never read
            state = torch.load(info.path, map_location="cpu", mmap=True, weights_only=True)
        else:
            with fs.open_input_file(info.path) as src:
                state = torch.load(io.BytesIO(src.read()), map_location="cpu", weights_only=True)
        if "optimizer_states" not in state:
            return 0
        buffer = io.BytesIO()
        torch.save({key: state[key] for key in WEIGHTS_KEYS if key in state}, buffer)
        tmp = f"{info.path.rsplit('/', 1)[0]}/.{info.base_name}.weights.tmp"
        with fs.open_output_stream(tmp) as out:
            out.write(buffer.getvalue())
        fs.move(tmp, info.path)
    except (OSError, RuntimeError, pickle.UnpicklingError) as err:  # gone, unreadable, a bucket that stopped answering
        print(f"[launch] could not keep only the weights of {info.path}: {why(err)}", file=sys.stderr)
        return 0
    return (info.size or 0) - buffer.getbuffer().nbytes


def summary(folders: int, freed: int, experiment: str) -> str:
    """One line for the launch's output."""
    return (
        f"[launch] deleted {folders} Ray checkpoint folder(s) under {experiment}, {freed / 2**20:.1f} MiB freed "
        "(the winner is in MLflow; --keep-checkpoints keeps them)"
    )


class CheckpointPruner(tune.Callback):
    """Keeps of each trial what ``--resume`` and publishing need: its latest checkpoint in full and its
    best checkpoint's weights; deletes the others and strips the optimizer state from a best that is
    no longer the latest, two experiment snapshots and ``grace_s`` after it was superseded. Once a
    trial ends, it keeps the weights of its best checkpoint only: at once (``weights_only``), and its
    latest, when not its best, is deleted late as above.

    Why not Ray's ``CheckpointConfig(num_to_keep=1)``: Ray deletes the superseded checkpoint the moment
    a new one registers, and records the new one in its experiment snapshot only at the end of the
    step; a launch killed in between (seen in ``tests/trainables_tests/test_resume.py``) is restored from a snapshot
    that names a deleted checkpoint, and that trial fails with "Could not recover from checkpoint".
    Here a checkpoint is deleted (or stripped) only once two later snapshots (which no longer name
    it as the latest) were written and ``grace_s`` has passed: Ray calls ``get_state`` on every
    snapshot, after writing the trials' state to its staging folder, and copies that folder to the storage path in the background (a
    copy still running skips the next one), so the storage can lag a snapshot behind; with
    ``TUNE_GLOBAL_CHECKPOINT_S=0`` snapshots come milliseconds apart. A trial keeps its superseded
    checkpoints for two snapshot periods (10 s or more each) and at least ``grace_s``. A resumed launch
    starts with a fresh pruner: what was superseded before the kill stays until the launch's clean-up.
    An ended trial is stripped at once, before a snapshot records its end: a launch killed in between
    resumes it from weights only, and the trial, seeing no training state, ends at once
    (``trainables.trial.resumable``).

    Args:
        metric: the search's objective, the checkpoints' score.
        mode: ``max`` or ``min``.
        grace_s: the least time between superseding a checkpoint and deleting or stripping it.
    """

    def __init__(self, *, metric: str, mode: str, grace_s: float = 60.0) -> None:
        self.metric, self.mode, self.grace_s = metric, mode, grace_s
        self._kept: dict[str, list[tuple[str, float]]] = {}  # trial id -> [(checkpoint path, score)]
        self._filesystems: dict[str, pyarrow.fs.FileSystem] = {}  # checkpoint path -> its filesystem
        # oldest first: (snapshot, when, [(path, "delete" or "strip")])
        self._superseded: list[tuple[int, float, list[tuple[str, str]]]] = []
        self._snapshots = 0  # get_state calls so far
        self._ended: set[str] = set()  # trials that ended (completed, or stopped by the scheduler)
        self._marked: set[str] = set()  # checkpoints waiting in ``_superseded`` to be stripped
        self._stripped: set[str] = set()  # checkpoints stripped

    def __getstate__(self) -> dict:  # pickled with the Tuner: the arguments only
        return {"metric": self.metric, "mode": self.mode, "grace_s": self.grace_s}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        score = (trial.last_result or {}).get(self.metric)  # the result this checkpoint was reported with
        value = float(score) if isinstance(score, (int, float)) and math.isfinite(score) else math.nan
        self._kept.setdefault(trial.trial_id, []).append((checkpoint.path, value))
        self._filesystems[checkpoint.path] = checkpoint.filesystem

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """An ended trial is never resumed: its checkpoints keep their weights only, from now on."""
        self._ended.add(trial.trial_id)
        for path, _ in self._kept.get(trial.trial_id, []):
            self._strip(path)

    def get_state(self) -> None:
        """On each snapshot: delete or strip what was superseded two or more snapshots and ``grace_s`` ago,
        then mark what is superseded now."""
        self._snapshots, clock = self._snapshots + 1, time.monotonic()
        while self._superseded and self._snapshots - self._superseded[0][0] >= 2:
            if clock - self._superseded[0][1] < self.grace_s:
                break
            for path, action in self._superseded.pop(0)[2]:
                if action == "strip":
                    self._strip(path)
                elif path in self._filesystems:
                    _delete(self._filesystems.pop(path), path)
        now: list[tuple[str, str]] = []
        for trial_id, kept in self._kept.items():
            latest, best, ended = kept[-1][0], self._best(kept), trial_id in self._ended
            keep = {best} if ended else {latest, best}
            now += [(path, "delete") for path, _ in kept if path not in keep]
            if ended:  # a checkpoint registered after the trial's end (none expected): stripped at once
                self._strip(best)
            elif best != latest and best not in self._marked | self._stripped:
                self._marked.add(best)
                now.append((best, "strip"))
            self._kept[trial_id] = [entry for entry in kept if entry[0] in keep]
        if now:
            self._superseded.append((self._snapshots, clock, now))
        return None

    def _strip(self, path: str) -> None:
        """Keep the weights only of checkpoint ``path`` (once; a deleted one is left alone)."""
        if path in self._filesystems and path not in self._stripped:
            self._stripped.add(path)
            weights_only(self._filesystems[path], path)

    def _best(self, kept: list[tuple[str, float]]) -> str:
        sign = 1.0 if self.mode == "max" else -1.0
        scored = [(sign * score, -i, path) for i, (path, score) in enumerate(kept) if math.isfinite(score)]
        return max(scored)[2] if scored else kept[-1][0]  # ties: the first (as Ray and the leaderboard)
