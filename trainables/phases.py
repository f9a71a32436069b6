"""Wall-clock phases of a launch (prepare, Ray start, the search, publishing), recorded by the driver.

The driver prints them at the end of every launch; a benchmark passes its own ``Phases`` to read
them, also when the launch fails part-way.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Phase:
    """One named phase: seconds spent in it (summed over repeats), first start and last end.

    Starts and ends are ``time.time()`` stamps, so they share one axis with events that other
    processes (trial workers) record.
    """

    seconds: float = 0.0
    start: float | None = None
    end: float | None = None


@dataclass
class Phases:
    """The phases of one launch, in the order they first started."""

    phases: dict[str, Phase] = field(default_factory=dict)

    @contextmanager
    def time(self, name: str) -> Iterator[None]:
        """Add the time spent in the ``with`` block to phase ``name`` (also when it raises)."""
        phase = self.phases.setdefault(name, Phase())
        start = time.time()
        phase.start = start if phase.start is None else phase.start
        try:
            yield
        finally:
            phase.end = time.time()
            phase.seconds += phase.end - start

    def add(self, name: str, seconds: float) -> None:
        """Record a phase measured elsewhere (e.g. time spent in driver callbacks during the search)."""
        self.phases.setdefault(name, Phase()).seconds += seconds

    def summary(self) -> str:
        """One line, e.g. ``prepare 2.1 s, ray_init 3.0 s, tuner_fit 41.7 s``."""
        return ", ".join(f"{name} {phase.seconds:.1f} s" for name, phase in self.phases.items())
