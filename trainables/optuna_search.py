"""Ray's OptunaSearch, told what ASHA did, with its study kept in a file the dashboard reads.

Ray's ``OptunaSearch.on_trial_complete`` tells Optuna COMPLETE with a trial's last reported value,
also for a trial that ASHA stopped at an early rung: TPE then learns from a truncated score as if it
were final, and from the last epoch where the leaderboard ranks trials by their best epoch. Here:

* a trial that ended before ``max_epochs`` without its own patience stopping it (so ASHA stopped it)
  is told as PRUNED; its per-epoch values, the rung's included, are its intermediate values, so TPE
  still uses it, as the lower-fidelity observation it is (Ray hands a searcher the result a scheduler
  stops a trial at only with the completion: it is reported there);
* any other finished trial is told COMPLETE with its best epoch's value: the objective the
  leaderboard, the checkpoint that is published and the terminal all rank by;
* failed trials stay FAIL, as in Ray.

A launch's study lives in an Optuna storage (``study_storage``: ``optuna.db`` beside the MLflow
sqlite store), named after the launch, so ``optuna-dashboard <storage>`` shows every launch's
search. Ray pickles the searcher with its experiment; a database connection does not belong in a
pickle, and the restored searcher must continue the same study: the pickle holds the storage URL,
the study name and each Ray trial's Optuna trial number, and unpickling reattaches to them.
"""

from __future__ import annotations

import logging
import math
import pickle
import shlex
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from filelock import FileLock
from optuna.storages import RDBStorage
from optuna.trial import Trial, TrialState
from ray.tune.search.optuna import OptunaSearch

from medtune.tracking.store import TRIAL_TAG, TrackingError, lock_path, retrying, sqlite_file

logger = logging.getLogger(__name__)

STORAGE_FILE = "optuna.db"
# sqlite's busy timeout for each connection: a write waits this long for another launch's (or the
# dashboard's) lock before failing; 60 s rather than sqlite3's default 5 s, then ``retrying``.
SQLITE_TIMEOUT_S = 60
LOCK_TIMEOUT_S = 300  # creating the tables takes a second; minutes of waiting means a stuck holder


def study_storage(tracking_uri: str, ray_storage: Path) -> str:
    """The storage URL of a launch's study: ``optuna.db`` beside a sqlite MLflow store, else in
    ``ray_storage`` (the folder of Ray's experiment folders), so ``mlflow ui`` and
    ``optuna-dashboard`` are started in the same place."""
    store = sqlite_file(tracking_uri)
    folder = store.parent if store is not None else ray_storage.resolve()
    return f"sqlite:///{folder / STORAGE_FILE}"


def dashboard_command(storage_url: str) -> str:
    return f"optuna-dashboard {shlex.quote(storage_url)}"


def open_storage(url: str) -> RDBStorage:
    """Optuna's storage at ``url``, its tables created by one process at a time.

    Optuna creates a fresh file's tables with no lock between processes: four launches opening one
    at once crashed ("table studies already exists", "UNIQUE constraint failed: alembic_version")
    in 8 of 8 tries. Here the opening runs under a ``FileLock`` (``medtune.tracking.store.lock_path``).
    """
    path = sqlite_file(url)
    if path is None:
        return RDBStorage(url)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock_path(path)), timeout=LOCK_TIMEOUT_S):
            return retrying(lambda: RDBStorage(url, engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT_S}}))
    except (OSError, sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.OptunaError) as err:
        first = " ".join(str(err).split())[:300]
        raise TrackingError(f"{url}: cannot open the Optuna study storage ({first})") from None


class AshaAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells ASHA-stopped trials as PRUNED and others by their best epoch.

    Args:
        max_epochs: the epoch budget (``training_iteration`` of a trial that ran to the end).
        storage_url: where the study lives (``study_storage``) [None: in memory, pickled whole, as in Ray].
        study_name: the study's name in that storage, unique per launch (required with ``storage_url``).
        *args, **kwargs: ``OptunaSearch``'s (``space``, ``metric``, ``mode``, ``sampler``, ...).
    """

    def __init__(
        self, *args: Any, max_epochs: int, storage_url: str | None = None, study_name: str | None = None, **kwargs: Any
    ) -> None:
        if storage_url is not None and not study_name:
            raise ValueError("a study kept in a storage needs a study_name")
        self.storage_url = storage_url
        storage = open_storage(storage_url) if storage_url is not None else None
        super().__init__(*args, storage=storage, study_name=study_name, **kwargs)
        self.max_epochs = max_epochs
        self._best: dict[str, float] = {}
        self._orphans: list[int] = []  # Optuna trial ids asked after the snapshot a resume restored

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id not in self._ot_trials and self._orphans:  # its configuration, for a new Ray trial
            self._ot_trials[trial_id] = Trial(self._ot_study, self._orphans.pop(0))
        suggest = super().suggest
        config = retrying(lambda: suggest(trial_id))
        ot_trial = self._ot_trials[trial_id]
        retrying(lambda: ot_trial.set_user_attr(TRIAL_TAG, trial_id))  # the dashboard's link to the MLflow run
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials:  # already told, before a kill that a resume rewound
            return
        self._record(trial_id, result)

    def _record(self, trial_id: str, result: dict) -> None:
        """The epoch's value as an intermediate value (once per epoch), and the trial's best so far."""
        value, report = result.get(self.metric), super().on_trial_result
        if value is None or "training_iteration" not in result:
            return
        # A trial's last epoch may come twice (the result it returned after, then its completion), and an
        # epoch run again after a resume was reported before the kill: Optuna keeps the first, says so.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is already reported")
            try:
                retrying(lambda: report(trial_id, result))
            except Exception as exc:  # noqa: BLE001 - a lost intermediate value must not end the search
                logger.warning(exc)
        if isinstance(value, (int, float)) and math.isfinite(value):
            old, sign = self._best.get(trial_id), 1.0 if self.mode == "max" else -1.0
            if old is None or sign * value > sign * old:
                self._best[trial_id] = float(value)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials:  # already told, before a kill that a resume rewound
            return
        if trial_id not in self._ot_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        if result and not error:
            # Ray gives on_trial_result no result that the scheduler stops a trial at (ASHA's rung, max_t):
            # the trial's last epoch arrives here only.
            self._record(trial_id, result)
        state, value = self._outcome(trial_id, result, error)
        ot_trial = self._ot_trials[trial_id]
        try:
            retrying(lambda: self._ot_study.tell(ot_trial, value, state=state))
        except Exception as exc:  # noqa: BLE001 - as Ray does: e.g. a NaN objective; the search goes on
            logger.warning(exc)
        self._completed_trials.add(trial_id)

    def _outcome(self, trial_id: str, result: dict | None, error: bool) -> tuple[TrialState, float | None]:
        if error:
            return TrialState.FAIL, None
        if not result:  # no value at all (Ray's rule)
            return TrialState.PRUNED, None
        epochs = int(result.get("training_iteration", 0))
        if epochs < self.max_epochs and not result.get("early_stopped"):  # ASHA stopped it
            return TrialState.PRUNED, None
        return TrialState.COMPLETE, self._best.get(trial_id, result.get(self.metric))

    # Persistence: Ray pickles the searcher into tuner.pkl (at construction) and into its experiment
    # snapshots (``save``); ``Tuner.restore`` unpickles the first and ``restore``s the latest second.

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if self.storage_url is None:
            return state  # an in-memory study travels in the pickle, as in Ray
        numbers = {ray_id: ot_trial.number for ray_id, ot_trial in state.pop("_ot_trials").items()}
        state.update(_storage=None, _ot_study=None, _orphans=[], _trial_numbers=numbers)
        return state

    def __setstate__(self, state: dict) -> None:
        numbers = state.pop("_trial_numbers", None)
        self.__dict__.update({"storage_url": None, "_orphans": [], **state})  # a pickle of before the storage
        if numbers is not None:
            self._reattach(numbers)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__getstate__(), file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__setstate__(pickle.load(file))

    def _reattach(self, numbers: dict[str, int]) -> None:
        """Load the study by name and map each Ray trial to its Optuna trial again.

        The storage may be ahead of the snapshot (a kill between two snapshots): a trial it already
        holds as finished counts as told; a trial it holds as running that no Ray trial of the
        snapshot owns was asked for a Ray trial the restored search never heard of, so it is handed,
        with its configuration, to the next new Ray trial (one Optuna trial per Ray trial).
        """
        self._storage = open_storage(self.storage_url)
        try:
            self._ot_study = optuna.load_study(
                study_name=self._study_name,
                storage=self._storage,
                sampler=self._sampler,
                pruner=optuna.pruners.NopPruner(),
            )
        except KeyError:
            raise TrackingError(f"{self.storage_url}: no study '{self._study_name}' to resume") from None
        trials = {t.number: t for t in self._ot_study.get_trials(deepcopy=False)}
        if missing := sorted(set(numbers.values()) - set(trials)):
            raise TrackingError(f"{self.storage_url}: study '{self._study_name}' lacks trials {missing} to resume")
        self._ot_trials = {ray_id: Trial(self._ot_study, trials[n]._trial_id) for ray_id, n in numbers.items()}
        self._completed_trials |= {ray_id for ray_id, n in numbers.items() if trials[n].state.is_finished()}
        owned = set(numbers.values())
        self._orphans = [
            t._trial_id for n, t in sorted(trials.items()) if t.state == TrialState.RUNNING and n not in owned
        ]
