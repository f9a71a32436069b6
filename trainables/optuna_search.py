"""Ray's OptunaSearch, told what ASHA did.

Ray's ``OptunaSearch.on_trial_complete`` tells Optuna COMPLETE with a trial's last reported value,
also for a trial that ASHA stopped at an early rung: TPE then learns from a truncated score as if it
were final, and from the last epoch where the leaderboard ranks trials by their best epoch. Here:

* a trial that ended before ``max_epochs`` without its own patience stopping it (so ASHA stopped it)
  is told as PRUNED; its per-epoch values were already reported as intermediate values, so TPE
  still uses it, as the lower-fidelity observation it is;
* any other finished trial is told COMPLETE with its best epoch's value: the objective the
  leaderboard, the checkpoint that is published and the terminal all rank by;
* failed trials stay FAIL, as in Ray.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

logger = logging.getLogger(__name__)


class AshaAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells ASHA-stopped trials as PRUNED and others by their best epoch.

    Args:
        max_epochs: the epoch budget (``training_iteration`` of a trial that ran to the end).
        *args, **kwargs: ``OptunaSearch``'s (``space``, ``metric``, ``mode``, ``sampler``, ...).
    """

    def __init__(self, *args: Any, max_epochs: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_epochs = max_epochs
        self._best: dict[str, float] = {}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        super().on_trial_result(trial_id, result)  # the epoch's value as an intermediate value
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            old, sign = self._best.get(trial_id), 1.0 if self.mode == "max" else -1.0
            if old is None or sign * value > sign * old:
                self._best[trial_id] = float(value)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if error or not result or trial_id in self._completed_trials or trial_id not in self._ot_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        epochs = int(result.get("training_iteration", 0))
        stopped_by_asha = epochs < self.max_epochs and not result.get("early_stopped")
        ot_trial = self._ot_trials[trial_id]
        try:
            if stopped_by_asha:
                self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
            else:
                best = self._best.get(trial_id, result.get(self.metric))
                self._ot_study.tell(ot_trial, best, state=TrialState.COMPLETE)
        except Exception as exc:  # noqa: BLE001 - as Ray does: e.g. a NaN objective; the search goes on
            logger.warning(exc)
        self._completed_trials.add(trial_id)
