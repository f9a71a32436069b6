"""The project folder: where a launch keeps its tracking store, Optuna study, caches, runs and reports.

It is the working directory, as MLflow's own default store (``./mlflow.db``) is, or the folder named
by ``MEDTUNE_PROJECT_DIR`` (``launch.py`` / ``analyze.py --project-dir`` set it). Nothing is found by
the package's own location: installed into a virtualenv, the package must not write there.
Search spaces are looked up in the project's ``search_spaces/`` first, then in those the package
ships (package data: the checkout's ``search_spaces/``).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "MEDTUNE_PROJECT_DIR"
SHIPPED_SPACES = Path(__file__).resolve().parent / "search_spaces"  # a link to the checkout's search_spaces/


def project_dir() -> Path:
    """The project folder (absolute): ``$MEDTUNE_PROJECT_DIR`` or the working directory."""
    return Path(os.environ.get(ENV) or Path.cwd()).resolve()


def use(folder: Path | None) -> Path:
    """Make ``folder`` (``--project-dir``) the project folder of this process and its children."""
    if folder is not None:
        os.environ[ENV] = str(folder.resolve())
    return project_dir()


def spaces_dirs() -> list[Path]:
    """Where space names are looked up, in order: the project's ``search_spaces/``, then the shipped ones."""
    own = project_dir() / "search_spaces"
    return [own, SHIPPED_SPACES] if own.resolve() != SHIPPED_SPACES.resolve() else [SHIPPED_SPACES]
