"""Faults the launch meets in the wild, each met by a real component: a storage path that refuses writes or
carries a secret, a tracking server answering 500, a worker that crashes at exit."""

from __future__ import annotations

from pathlib import Path

import pytest

import launch
from medtune.tracking import TrackingError
from trainables.storage import PROBE, check_reachable, storage_root

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


def test_a_folder_that_refuses_writes_is_one_line_and_keeps_nothing(tmp_path: Path) -> None:
    # /proc is a folder every user may "write" by its permissions (root always), yet it takes no new file:
    # only writing a probe tells (a read-only mount behaves the same).
    with pytest.raises(TrackingError, match=r"^--storage-path /proc/medtune/runs: cannot write there \(.* in /proc\)$"):
        check_reachable("/proc/medtune/runs")
    # A writable folder passes; the probe is deleted and the folders still to be made are left to Ray.
    check_reachable(str(tmp_path / "new" / "runs"))
    assert list(tmp_path.iterdir()) == []
    assert not [p for p in Path("/tmp").glob(f"{PROBE}*")]


def test_credentials_in_the_storage_path_are_refused_without_echoing_them(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    storage = f"s3://AKIAEXAMPLE:{SECRET}@bucket/runs?region=us-east-1"
    # The bucket as typed, less the user-info: the line says where credentials belong.
    with pytest.raises(
        TrackingError, match=r"^--storage-path s3://bucket/runs\?region=us-east-1: credentials in"
    ) as err:
        storage_root(storage)
    assert SECRET not in str(err.value) and "environment" in str(err.value)
    # Through the launch: one line, exit 2, before anything is prepared; the secret is nowhere on the terminal.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--space", "whole_cls", "--smoke", "--data", str(tmp_path / "data"), "--tracking-uri", uri]
    code = launch.main([*args, "--storage-path", storage, "--cache-dir", str(tmp_path / "cache")])
    out, err = capsys.readouterr()
    assert code == 2 and err.startswith("error: --storage-path s3://bucket/runs") and len(err.splitlines()) == 1
    assert SECRET not in out + err and "AKIAEXAMPLE" not in out + err
    assert list(tmp_path.iterdir()) == []
