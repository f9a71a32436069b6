"""A launch's parent run and folders: new (named by its start time), resumed, or a nested launch's stage.

The parent run records where its search is kept (Ray's folder, ``ray_path``) and its Optuna study;
``--resume`` finds them there.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from medtune.config.options import LaunchOptions
from medtune.prepare.inputs import Prepared, start_parent_run
from medtune.publish.nested import NESTED_TAG
from medtune.tracking.redact import redact_uri
from medtune.tracking.store import PARENT_TAG, TrackingError, experiment_id, latest_launch, trial_runs
from trainables.optuna_search import study_storage
from trainables.search import can_restore
from trainables.storage import Location, join, location

STUDY_TAGS = ("optuna_storage", "optuna_study")  # the parent run's record of where its Optuna study lives


@dataclasses.dataclass(frozen=True)
class Stage:
    """A nested launch's stage (an outer fold, the refit): its search's parent run is a child run of the
    nested launch's run, named ``name`` and tagged ``tags``, instead of a launch of its own."""

    launch_run_id: str
    name: str
    tags: dict[str, str]
    # Set on Ctrl-C (``trainables.nested.stop_between_stages``): the stage's search then ends as interrupted,
    # even when Ray Tune counts a trial it stopped mid-way as ended.
    stopped: threading.Event | None = dataclasses.field(default=None, compare=False)

    def find(self, client: MlflowClient, exp_id: str):
        """The stage's run under the launch, or None (the newest, if a failed start left two)."""
        runs = [r for r in trial_runs(client, exp_id, self.launch_run_id) if self._mine(r)]
        return max(runs, key=lambda r: r.info.start_time, default=None)

    def _mine(self, run) -> bool:
        return all(run.data.tags.get(key) == value for key, value in self.tags.items())


NAME_TRIES = 100  # launches of one experiment started in the same second that get a folder of their own


def new_location(storage_path: str, cache_dir: Path, experiment: str, *, now: float) -> Location:
    """A new launch's folders, named ``<experiment>-<date>-<time>`` at ``now`` (``-2``, ``-3``, ... after
    launches of the experiment started in the same second). The driver's folder is created exclusively
    (no ``exist_ok``): two launches never share a Ray folder, spool, scratch folder or Optuna study, and
    the first to finish never deletes the other's checkpoints. (Launches on two machines writing into one
    bucket at the same second are told apart only by their driver folders, on their own disks.)
    """
    stamp = f"{experiment}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}"
    for n in range(1, NAME_TRIES + 1):
        loc = location(join(storage_path, stamp if n == 1 else f"{stamp}-{n}"), cache_dir)
        loc.driver.parent.mkdir(parents=True, exist_ok=True)
        try:
            loc.driver.mkdir()
        except FileExistsError:
            continue
        return loc
    raise TrackingError(f"{loc.driver.parent}: {NAME_TRIES} launches of '{experiment}' in one second; start it again")


def parent_run(
    client: MlflowClient, prepared: Prepared, options: LaunchOptions, stage: Stage | None = None
) -> tuple[str, Location]:
    """The parent run and where its search is kept: a new launch (or nested stage), or the one ``--resume``
    continues."""
    if not options.resume:
        loc = new_location(options.storage_path, options.cache_dir, prepared.experiment, now=time.time())
        if stage is None:
            return start_parent_run(client, prepared, options, redact_uri(loc.ray), loc.name), loc
        tags = {**stage.tags, PARENT_TAG: stage.launch_run_id}
        return start_parent_run(client, prepared, options, redact_uri(loc.ray), stage.name, stage=tags), loc
    exp_id = experiment_id(client, prepared.experiment, create=False)
    run = stage.find(client, exp_id) if stage else latest_launch(client, exp_id)
    if "ray_path" not in run.data.tags:  # a nested launch: its stages hold the searches
        folds = run.data.tags.get(NESTED_TAG, "K")
        raise TrackingError(
            f"--resume: the latest launch of '{prepared.experiment}' is nested; resume it with --outer-folds {folds}"
        )
    loc = location(run.data.tags["ray_path"], options.cache_dir)
    if not can_restore(loc.ray):
        raise TrackingError(
            f"--resume: the latest launch of '{prepared.experiment}' has no restorable search at {loc.ray}"
        )
    if run.info.status == "FINISHED":  # its checkpoints are gone (trainables.cleanup); nothing is left to run
        raise TrackingError(
            f"--resume: the latest launch of '{prepared.experiment}' finished; start a new one without --resume"
        )
    client.update_run(run.info.run_id, "RUNNING")
    return run.info.run_id, loc


def study(
    client: MlflowClient, prepared: Prepared, options: LaunchOptions, parent_run_id: str, loc: Location
) -> str | None:
    """The Optuna storage keeping the launch's study (named ``loc.name``), recorded on the parent run;
    None for a grid (no searcher) and for a resumed launch that recorded none (its study is in memory)."""
    if options.resume:  # the restored searcher reattaches to the study its launch recorded
        return client.get_run(parent_run_id).data.tags.get(STUDY_TAGS[0])
    if prepared.space.search == "grid":
        return None
    storage = study_storage(prepared.tracking_uri, loc.driver.parent)
    for tag, value in zip(STUDY_TAGS, (storage, loc.name)):
        client.set_tag(parent_run_id, tag, value)
    return storage
