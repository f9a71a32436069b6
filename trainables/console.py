"""What the terminal shows during a search: a line per trial start and end, and a heartbeat.

Ray's own tables (``verbose=1``) print a box per trial start and result and a status table whose
columns are the first metrics Ray finds; with ``--verbose`` they come back. By default the search is
``verbose=0`` and this driver-side callback prints instead:

* a trial's start: its name (the MLflow run name, ``medtune.tracking.run_name``) and searched values;
* its end: completed, stopped by ASHA at epoch k, early-stopped by its patience, or failed with the
  first line of its error; its best objective (the best epoch's, as the leaderboard ranks) and the
  best so far;
* at most once a minute: trials done / running / pending, the time elapsed and an estimate of the
  time left at the pace so far (a running trial counted as half done).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from ray import tune

from medtune.tracking import run_name
from trainables.sampling import flat_config

HEARTBEAT_S = 60.0


class Console(tune.Callback):
    """Short trial lines and a heartbeat (see the module docstring).

    Args:
        metric: the objective, e.g. ``val/iou``.
        mode: ``max`` or ``min``.
        max_epochs: the epoch budget (a trial that ends before it without its patience was stopped by ASHA).
        searched: the searched parameter names (what the start line shows, in the space's order).
        num_samples: the trials the search will run.
        out: where to print [stdout].
    """

    def __init__(
        self,
        *,
        metric: str,
        mode: str,
        max_epochs: int,
        searched: list[str],
        num_samples: int,
        out: TextIO | None = None,
    ) -> None:
        self.metric, self.sign, self.max_epochs = metric, 1.0 if mode == "max" else -1.0, max_epochs
        self.searched, self.num_samples, self.out = searched, num_samples, out
        self.best: dict[str, float] = {}  # trial id -> best objective so far
        self.done = 0
        self.started = time.time()
        self.last_beat = self.started

    def __getstate__(self) -> dict:  # pickled with the Tuner: never the stream
        return {**self.__dict__, "out": None}

    def _print(self, line: str) -> None:
        print(line, file=self.out or sys.stdout, flush=True)

    def _name(self, trial: Any) -> str:
        return run_name(flat_config(trial.config), self.searched, trial.trial_id)

    def _best_so_far(self) -> str:
        scores = [v for v in self.best.values() if math.isfinite(v)]
        if not scores:
            return "none yet"
        return f"{max(scores, key=lambda v: self.sign * v):.4f}"

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        config = flat_config(trial.config)
        values = ", ".join(f"{k}={_short(config[k])}" for k in self.searched if k in config)
        self._print(f"[trial] start {self._name(trial)}: {values}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            old = self.best.get(trial.trial_id)
            if old is None or not math.isfinite(old) or self.sign * value > self.sign * old:
                self.best[trial.trial_id] = float(value)

    def _end(self, trial: Any, how: str) -> None:
        self.done += 1
        best = self.best.get(trial.trial_id, math.nan)
        score = f"{self.metric} {best:.4f}" if math.isfinite(best) else f"no {self.metric}"
        self._print(f"[trial] end   {self._name(trial)}: {how}; {score} (best so far {self._best_so_far()})")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        epochs = int(last.get("training_iteration", 0))
        if last.get("early_stopped"):
            how = f"early-stopped by its patience at epoch {epochs}"
        elif epochs < self.max_epochs:
            how = f"stopped by ASHA at epoch {epochs}"
        else:
            how = f"completed {epochs} epochs"
        self._end(trial, how)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, f"failed: {_first_error_line(trial)}")

    def on_step(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.time()
        if now - self.last_beat < HEARTBEAT_S:
            return
        self.last_beat = now
        running = sum(t.status == "RUNNING" for t in trials)
        pending = max(self.num_samples - self.done - running, 0)
        elapsed = now - self.started
        left = ""
        if self.done:  # at the pace so far; a running trial counts as half done
            left = f", about {_duration(elapsed / self.done * (pending + running / 2))} left"
        self._print(
            f"[search] {self.done}/{self.num_samples} trials done, {running} running, {pending} pending; "
            f"{_duration(elapsed)} elapsed{left}"
        )


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _first_error_line(trial: Any) -> str:
    """The exception's message: the last non-empty line of the trial's error file."""
    path = trial.error_file
    if not path or not Path(path).is_file():
        return "unknown error (see mlflow ui)"
    lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "unknown error (see mlflow ui)"
