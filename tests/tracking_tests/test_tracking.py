"""Provenance recorded on every launch."""

from __future__ import annotations


def test_code_version_outside_git_hashes_only_the_project_code(tmp_path, monkeypatch) -> None:
    import medtune.tracking.provenance as tracking

    for folder in ("src", "trainables", ".venv/lib"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "m.py").write_text("x = 1\n")
    monkeypatch.setattr(tracking, "CODE_DIR", tmp_path)  # not a git checkout
    first = tracking.code_version()
    (tmp_path / ".venv/lib/m.py").write_text("x = 2\n")
    # A content hash of src/ and trainables/ (and top-level scripts); the virtualenv is not code.
    assert first.startswith("sha256:") and tracking.code_version() == first
    (tmp_path / "src/m.py").write_text("x = 2\n")
    assert tracking.code_version() != first
