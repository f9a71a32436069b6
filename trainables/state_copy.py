"""A complete copy of Ray Tune's experiment state, so that a launch killed while Tune wrote it can resume.

Tune rewrites ``experiment_state-<session>.json`` in place (``open(..., "w")`` then ``json.dump``, in
``TuneController.save_to_dir``) in the experiment folder, which is also its staging folder when the
storage is a local path. A launch killed in the middle (SIGKILL, the machine losing power) leaves the
file cut, and ``--resume`` then failed with Tune's JSONDecodeError (seen once in the suite's SIGKILL
test). ``StateCopy`` keeps the last complete version beside it; ``restore_cut_state`` puts it back
before a resume reads the folder. A bucket needs neither: Tune writes the state to a local staging
folder and uploads whole files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ray.tune import Callback

STATE_GLOB = "experiment_state-*.json"
COPY_SUFFIX = ".complete"  # experiment_state-<session>.json.complete


def _complete(path: Path) -> bool:
    try:
        json.loads(path.read_bytes())
        return True
    except (OSError, ValueError):
        return False


def _copy_whole(source: Path, target: Path, state: Path) -> None:
    """Copy ``source`` over ``target`` through a temporary file beside ``state``: ``target`` is never cut."""
    temporary = state.with_name(f".{state.name}.tmp")
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def keep_copies(folder: Path) -> None:
    """Copy every complete experiment state file of ``folder`` to ``<name>.complete``."""
    for state in folder.glob(STATE_GLOB):
        if _complete(state):
            _copy_whole(state, state.with_name(state.name + COPY_SUFFIX), state)


def restore_cut_state(folder: Path) -> list[str]:
    """Replace every experiment state file of ``folder`` that does not parse by its complete copy, if one
    exists; the names of the files restored."""
    restored = []
    for state in folder.glob(STATE_GLOB):
        copy = state.with_name(state.name + COPY_SUFFIX)
        if not _complete(state) and copy.is_file():
            _copy_whole(copy, state, state)
            restored.append(state.name)
    return restored


class StateCopy(Callback):
    """A Tune callback that keeps ``keep_copies`` of the experiment folder after each of Tune's state writes.

    Tune asks its callbacks for their state (``get_state``) right after writing the experiment state
    (``TuneController.save_to_dir``: the state file, the searcher, then the callbacks): the file is
    complete at that moment. This callback has no state of its own (it returns None: no file is written
    for it).
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def get_state(self) -> None:
        keep_copies(Path(self.folder))
        return None
