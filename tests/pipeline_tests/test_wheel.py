"""The package works where it is installed: a wheel in a fresh environment, run from an empty folder.

The wheel (``pip wheel .``) is installed without ``-e`` into a new virtualenv whose only other
packages are this environment's dependencies (a path line, so that ``medtune`` itself comes from the
wheel and never from the checkout). From an empty folder, ``medtune launch --smoke`` and
``medtune analyze`` must find the shipped search spaces and write everything they write (store,
caches, runs, reports) into that folder: nothing into the environment or the checkout.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import PROJECT_DIR

pytestmark = pytest.mark.e2e


def _files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding the medtune wheel; returns its ``bin/`` folder."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"  # a copy: building writes build/ and *.egg-info into the tree it builds
    for name in ("src", "trainables", "search_spaces"):
        shutil.copytree(PROJECT_DIR / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT_DIR / name, source / name)
    env_vars = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # pip must see only the new environment
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), "."],
        cwd=source, env=env_vars, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    wheel = next((root / "dist").glob("medtune-*.whl"))
    env = root / "env"
    subprocess.run([sys.executable, "-m", "venv", str(env)], env=env_vars, check=True, timeout=300)
    subprocess.run(
        [env / "bin" / "pip", "install", "-q", "--no-deps", "--no-index", "--disable-pip-version-check", str(wheel)],
        env=env_vars, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    packages = next((env / "lib").glob("python3*/site-packages"))
    # The dependencies of this environment, appended after the wheel's own site-packages.
    (packages / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return env / "bin"


def test_installed_wheel_runs_a_search_and_a_report_from_an_empty_folder(
    installed: Path, synth_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    env_root = installed.parent
    before_env, before_repo = _files(env_root), _files(PROJECT_DIR / "src")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "RAY_AUTH_MODE": "disabled"}
    env.pop("PYTHONPATH", None)
    env.pop("MEDTUNE_PROJECT_DIR", None)
    medtune = str(installed / "medtune")
    where = subprocess.run(
        [str(installed / "python"), "-c", "import medtune, trainables; print(medtune.__file__, trainables.__file__)"],
        cwd=folder, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    # The package is the installed wheel's, not the checkout's.
    assert str(env_root) in where.stdout and str(PROJECT_DIR) not in where.stdout, where.stdout
    launch = subprocess.run(
        [medtune, "launch", "--space", "whole_cls", "--smoke", "--num-samples", "1", "--max-epochs", "1",
         "--data", str(synth_dir), "--max-concurrent", "1"],
        cwd=folder, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert launch.returncode == 0, launch.stderr[-3000:]
    report = subprocess.run(
        [medtune, "analyze", "--experiment", "whole_cls"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    written = {p.parts[0] for p in _files(folder)}
    # The store, the caches, Ray's results and the report, all in the project folder.
    assert {"mlflow.db", ".cache", "runs", "reports"} <= written, written
    assert not [p for p in folder.iterdir() if p.name.endswith(".lock")], "lock files belong under .cache/"
    # Nothing written into the environment or into the checkout's package.
    assert _files(env_root) == before_env
    assert _files(PROJECT_DIR / "src") == before_repo
