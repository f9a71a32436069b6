"""What the terminal shows during a search: a line per trial start and end, and a heartbeat.

Ray's own tables (``verbose=1``) print a box per trial start and result and a status table whose
columns are the first metrics Ray finds; with ``--verbose`` they come back. By default the search is
``verbose=0`` and this driver-side callback prints instead:

* a trial's start: its name (the MLflow run name, ``medtune.tracking.provenance.run_name``) and searched values;
* its end: completed, stopped by ASHA at epoch k, early-stopped by its patience, or failed with the
  first line of its error; its best objective (the best epoch's, as the leaderboard ranks) and the
  best so far;
* at most once a minute: trials done / running / pending, the time elapsed and an estimate of the
  time left at the pace so far (a running trial counted as half done);
* a worker process that crashed with a native error (a C++ ``TerminateHandler`` stack trace, a fatal
  signal): one line naming its trial and whether that trial's results are kept, instead of the ~60
  lines of the trace, which stay in the worker's Ray log file (``NativeCrashes``).
"""

from __future__ import annotations

import math
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ray import tune

from medtune.tracking.provenance import run_name
from trainables.sampling import flat_config

HEARTBEAT_S = 60.0
# The first line of a worker's native crash report: Ray's TerminateHandler trace, a fatal signal (Abseil's
# handler), libstdc++'s terminate message, Python's faulthandler. Everything that worker prints after it
# belongs to the report (the process is dying).
CRASH_START = re.compile(
    r"logging\.cc:\d+: (Stack trace:|Unhandled)|\*\*\* SIG[A-Z]+ received at time=|^terminate called|^Fatal Python error:"
)
PRINTER = "ray_print_logs"  # the name Ray's driver gives its printer of the workers' output


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
        self.workers: dict[int, Any] = {}  # worker pid -> the trial that last reported from it
        self.ended: set[str] = set()  # trial ids that completed or failed
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

    def setup(self, **info: Any) -> None:
        """At the search's start (after ``ray.init``): workers' native crash reports become one line."""
        NativeCrashes.install(self.crashed)

    def crashed(self, batch: dict) -> None:
        """One line for a worker whose native crash report began in ``batch`` (Ray's log batch)."""
        pid, ip = batch.get("pid"), batch.get("ip", "")
        where = f"its native trace is in {_worker_log(pid)}"
        trial = self.workers.get(pid)
        if trial is None:
            self._print(f"[ray] a worker (pid {pid}, {ip}) crashed with a native error; no trial ran in it; {where}")
        elif trial.trial_id in self.ended:
            self._print(
                f"[trial] worker of {self._name(trial)} (pid {pid}) crashed after its trial ended: "
                f"its results are kept; {where}"
            )
        else:
            self._print(
                f"[trial] worker of {self._name(trial)} (pid {pid}) crashed while training: the epochs it reported "
                f"are kept, the trial fails (retried up to --max-failures times); {where}"
            )

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        config = flat_config(trial.config)
        values = ", ".join(f"{k}={_short(config[k])}" for k in self.searched if k in config)
        self._print(f"[trial] start {self._name(trial)}: {values}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if isinstance(result.get("pid"), int):  # Tune adds the reporting worker's pid to every result
            self.workers[result["pid"]] = trial
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            old = self.best.get(trial.trial_id)
            if old is None or not math.isfinite(old) or self.sign * value > self.sign * old:
                self.best[trial.trial_id] = float(value)

    def _end(self, trial: Any, how: str) -> None:
        self.done += 1
        self.ended.add(trial.trial_id)
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


class NativeCrashes:
    """Ray's printer of the workers' output, less their native crash reports: from a worker's first
    ``CRASH_START`` line on, its lines go to its log file only (Ray writes every worker's output there)
    and ``on_crash`` is called once with the batch where the report began.

    Args:
        printer: Ray's handler of a log batch (``{"pid", "ip", "lines", "is_err", ...}``).
        on_crash: called with the batch a worker's crash report began in.
    """

    def __init__(self, printer: Callable[[dict], None], on_crash: Callable[[dict], None]) -> None:
        self.printer, self.on_crash = printer, on_crash
        self.crashing: set[tuple[str, Any]] = set()  # (node ip, pid) of workers whose report began

    def __call__(self, batch: dict) -> None:
        lines, worker = list(batch.get("lines", [])), (batch.get("ip", ""), batch.get("pid"))
        if worker in self.crashing:
            return
        start = next((i for i, line in enumerate(lines) if CRASH_START.search(line)), None)
        if start is not None:
            self.crashing.add(worker)
            lines = lines[:start]
        if lines:
            self.printer({**batch, "lines": lines})
        if start is not None:
            self.on_crash(batch)

    @classmethod
    def install(cls, on_crash: Callable[[dict], None]) -> bool:
        """Wrap the driver's printer of the workers' output (set up by ``ray.init(log_to_driver=True)``);
        whether there was one to wrap. Ray's ``shutdown`` removes it by its name, wrapper and all."""
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

        with dispatcher._lock:
            for i, (name, handler) in enumerate(dispatcher.handlers):
                if name == PRINTER and not isinstance(handler, cls):
                    dispatcher.handlers[i] = (name, cls(handler, on_crash))
                    return True
        return False


def _worker_log(pid: Any) -> str:
    """The Ray log file holding worker ``pid``'s output on this machine, else where to find it."""
    try:
        from ray._private.worker import _global_node

        found = sorted(Path(_global_node.get_logs_dir_path()).glob(f"worker-*-{pid}.err"))
    except (AttributeError, OSError):  # no local node (a client of a remote cluster)
        found = []
    return str(found[-1]) if found else f"Ray's worker logs of its node (worker-*-{pid}.err)"


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
