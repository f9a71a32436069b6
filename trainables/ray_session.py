"""Ray for one launch: started (or joined) with the code shipped to every worker, shut down after.

A nested launch's stages share the session its driver started (``ray_session`` inside one is a no-op).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import ray

import medtune
import trainables
from trainables.phases import Phases


def code_runtime_env() -> dict:
    """Ship the code to every worker through Ray (``py_modules``), not through a shared folder or
    PYTHONPATH: the nodes of a real cluster need not see this checkout."""
    return {"py_modules": [medtune, trainables]}


class RayStartError(RuntimeError):
    """Ray could not start its local node: one line for the terminal, not Ray's traceback."""


STARTUP_TIMEOUT = "timed out during startup"  # Ray's message when its node does not register in 30 s


def _init(address: str | None, level: str) -> None:
    """``ray.init`` with the code shipped to workers; a local node that did not come up in Ray's fixed 30 s
    (a machine busy with other work) is shut down and started once more before giving up in one line."""
    for attempt in (1, 2):
        try:
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=True,
                logging_level=getattr(logging, level),
                logging_config=ray.LoggingConfig(log_level=level),  # trials' loggers too (checkpoint notices)
                runtime_env=code_runtime_env(),
            )
            return
        except Exception as err:  # Ray raises a bare Exception for this
            if STARTUP_TIMEOUT not in str(err):
                raise
            ray.shutdown()
            if attempt == 2:
                raise RayStartError(
                    "Ray's node did not start within its 30 s, twice: the machine is too busy (see `uptime`)"
                ) from err
            print(f"[launch] Ray's node {STARTUP_TIMEOUT} (a busy machine?); starting it once more", file=sys.stderr)


@contextmanager
def ray_session(address: str | None = None, *, phases: Phases | None = None, verbose: bool = False) -> Iterator[None]:
    """Ray started (or joined at ``address``) with the code shipped to workers, shut down after.

    Trials' own output reaches the terminal (once per distinct line, ``RAY_DEDUP_LOGS``): their
    warnings and errors, the routine lines being silenced in the trials (``medtune.engine.quiet``).
    """
    phases = phases if phases is not None else Phases()
    if ray.is_initialized():  # a nested launch's stage: the launch's Ray session, started once for all stages
        yield
        return
    # Ray's new output engine prints its experiment box and a TensorBoard hint even at verbose=0.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1" if verbose else "0")
    level = "INFO" if verbose else "WARNING"
    with phases.time("ray_init"):
        _init(address, level)
    try:
        yield
    finally:
        with phases.time("ray_shutdown"):
            ray.shutdown()
