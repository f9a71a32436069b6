"""``benchmarks/import_edges.py`` on a hand-made package whose edges and circles are known."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import PROJECT_DIR

SCRIPT = PROJECT_DIR / "benchmarks" / "import_edges.py"


def package(root: Path, files: dict[str, str]) -> Path:
    """A ``medtune`` folder under ``root`` holding ``files`` (relative path -> source)."""
    src = root / "medtune"
    for name, text in {"__init__.py": "", **files}.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
    return src


def run(src: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--src", str(src)], capture_output=True, text=True, check=False)


def test_edges_are_counted_once_per_pair_with_their_kind(tmp_path: Path) -> None:
    src = package(
        tmp_path,
        {
            "data/__init__.py": "from . import io\n",  # relative: data -> data.io
            "data/io.py": "import json\n",
            "flat.py": "from medtune.data import io, VERSION\nfrom medtune.data.io import load\n",
            "late.py": "def f():\n    from medtune import flat\n",
            "typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from medtune.late import f\n",
        },
    )
    out = run(src)
    # flat -> data.io (twice, one edge) and -> data (VERSION is no module): 2 top; data -> data.io: 1 top.
    assert out.returncode == 0, out.stderr
    assert "module edges: 5 (3 top, 1 deferred, 1 types)" in out.stdout
    # files and folders: __init__, flat, late, typed and data/; between them flat -> data, late -> flat, typed -> late.
    assert "files and folders in medtune/: 5 (4 flat modules, 1 folders)" in out.stdout
    assert "unit edges (between files and folders): 3" in out.stdout
    assert "no module import circle" in out.stdout


def test_a_circle_hidden_by_a_deferred_import_fails(tmp_path: Path) -> None:
    src = package(tmp_path, {"a.py": "from medtune import b\n", "b.py": "def f():\n    import medtune.a\n"})
    out = run(src)
    # A deferred import runs: the circle is real, and the exit status says so.
    assert out.returncode == 1 and "module circle: medtune.a <-> medtune.b" in out.stdout


def test_a_circle_through_type_checking_only_is_a_note(tmp_path: Path) -> None:
    typed = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from medtune.a import X\nelse:\n    pass\n"
    out = run(package(tmp_path, {"a.py": "from medtune import b\n", "b.py": typed}))
    assert out.returncode == 0
    assert "TYPE_CHECKING imports only (never run): medtune.a <-> medtune.b" in out.stdout


def test_a_folder_that_is_no_package_is_one_line(tmp_path: Path) -> None:
    out = run(tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "--src" in out.stderr
