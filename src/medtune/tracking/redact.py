"""Credentials out of URIs before they are tagged, logged or printed.

A URI may carry a user name and password in its user-info (``postgresql://u:pw@host/db``,
``s3://KEY:SECRET@bucket``, ``http://u:pw@host``). The tracking URI is printed after every
launch and in the outage lines, the storage path is stored as a tag and the resume hint echoes
the command line: each goes through this module first, so a secret never reaches the store, the
terminal or a log file. One rule, one place: everything that shows a URI imports it from here.
``redact_output`` is the backstop for what the launch prints and did not write itself (an MLflow
error quoting its request URL, Ray's echo of a worker's line, a traceback).
"""

from __future__ import annotations

import re
import sys
from typing import TextIO

# A URI with an authority: a scheme (RFC 3986 section 3.1) then "//".
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"]+")
_AUTHORITY_END = re.compile(r"[/?#]")


def _userinfo_end(rest: str) -> int:
    """Index just past the user-info's ``@`` in the text after ``://``, or 0 when there is none.

    The authority ends at the first ``/``, ``?`` or ``#``, and its user-info at its last ``@``.
    An AWS secret key often holds an unescaped ``/``; it then ends the authority early, leaving
    ``KEY:SEC`` as a host with a port that is not a number. That can only be user-info cut short,
    so the user-info then runs to the next ``@``.
    """
    end = _AUTHORITY_END.search(rest)
    authority = rest[: end.start()] if end else rest
    if "@" in authority:
        return authority.rindex("@") + 1
    _, colon, port = authority.partition(":")
    if colon and not port.isdigit() and "@" in rest:
        return rest.index("@") + 1
    return 0


def redact_uri(uri: str) -> str:
    """``uri`` without its user-info: ``postgresql://u:pw@host/db`` -> ``postgresql://host/db``.

    Anything that is not a URI with an authority (a local path, ``sqlite:///x.db``,
    ``models:/name@champion``) comes back unchanged.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*", scheme):
        return uri
    return scheme + sep + rest[_userinfo_end(rest) :]


def redact_text(text: str) -> str:
    """``text`` with every URI in it passed through :func:`redact_uri` (a command line, a message)."""
    return _URI.sub(lambda match: redact_uri(match.group(0)), text)


class RedactingStream:
    """A text stream whose writes pass through :func:`redact_text`; everything else is the wrapped stream's."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact_text(text))
        return len(text)

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


def redact_output() -> None:
    """Route this process's ``sys.stdout`` and ``sys.stderr`` through :func:`redact_text`, for good (an
    entry point calls it first: the traceback of an uncaught error is printed after it returns)."""
    if not isinstance(sys.stdout, RedactingStream):
        sys.stdout = RedactingStream(sys.stdout)
    if not isinstance(sys.stderr, RedactingStream):
        sys.stderr = RedactingStream(sys.stderr)
