"""Closed doors: Ray on loopback only, no credentials in what is shown, launch folders of their own."""

from __future__ import annotations

import pytest

from medtune.redact import redact_text, redact_uri

SECRET = "pw-7f3a9c"

REDACTED = [
    (f"postgresql://u:{SECRET}@host:5432/db", "postgresql://host:5432/db"),
    (f"s3://KEY:{SECRET}@bucket/prefix", "s3://bucket/prefix"),
    (f"http://u:{SECRET}@host", "http://host"),
    (f"https://{SECRET}@host/api?x=1#y", "https://host/api?x=1#y"),  # a token alone as the user name
    (f"http://u:p@{SECRET}@host:80/x", "http://host:80/x"),  # an unescaped @ in the password
    (f"s3://AKIA:{SECRET}/K7+G/bPx@bucket/p", "s3://bucket/p"),  # an AWS secret key with unescaped '/'
]
UNCHANGED = [
    "sqlite:////tmp/mlflow.db",
    "models:/seg@champion",
    "http://127.0.0.1:5000/a@b",  # '@' in a path is not user-info
    "s3://bucket/dir@2024/x",
    "/tmp/runs@1",
    "runs",
]


@pytest.mark.parametrize(("uri", "shown"), REDACTED)
def test_redact_uri_drops_user_info(uri: str, shown: str) -> None:
    # The whole user-info goes, the host, port, path, query and fragment stay.
    assert redact_uri(uri) == shown


@pytest.mark.parametrize("uri", UNCHANGED)
def test_redact_uri_keeps_uris_without_user_info(uri: str) -> None:
    assert redact_uri(uri) == uri


def test_redact_text_finds_every_uri_in_a_command_line() -> None:
    line = (
        f"python launch.py --storage-path 's3://K:{SECRET}@b/x' --tracking-uri=postgresql://u:{SECRET}@h/db "
        f"--segmenter models:/seg@champion"
    )
    shown = redact_text(line)
    # Quoted, after '=' or a space: each URI loses its user-info; the rest of the line is kept as it was.
    assert SECRET not in shown
    assert shown == (
        "python launch.py --storage-path 's3://b/x' --tracking-uri=postgresql://h/db --segmenter models:/seg@champion"
    )
