"""Each launch's Optuna study lives in ``optuna.db`` beside the MLflow store: ``optuna-dashboard`` shows it,
a resume continues it, several launches share the file."""

from __future__ import annotations

import pickle
import re
import threading
import warnings
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.samplers import RandomSampler
from optuna.trial import TrialState

from medtune.config.spaces import load_space
from medtune.tracking.store import PARENT_TAG, TRIAL_TAG
from tests.helpers import SharedLaunch, Workspace, runs_of
from trainables.optuna_search import AshaAwareOptunaSearch, open_storage, study_storage
from trainables.parent import STUDY_TAGS
from trainables.sampling import DefineByRun

METRIC = "val/balanced_acc"


def _searcher(url: str, name: str) -> AshaAwareOptunaSearch:
    space = DefineByRun(load_space("whole_cls"))
    return AshaAwareOptunaSearch(
        space=space,
        metric=METRIC,
        mode="max",
        sampler=RandomSampler(seed=0),
        max_epochs=2,
        storage_url=url,
        study_name=name,
    )


def _epochs(searcher: AshaAwareOptunaSearch, trial_id: str, values: dict[int, float], *, end: bool = True) -> None:
    """Epoch results as Ray delivers them; with ``end``, the last one (max_epochs) comes with the completion."""
    last = max(values) if end else None
    for epoch, value in values.items():
        if epoch != last:
            searcher.on_trial_result(trial_id, {METRIC: value, "training_iteration": epoch})
    if end:
        searcher.on_trial_complete(trial_id, {METRIC: values[last], "training_iteration": last})


def _study_line(launch: SharedLaunch) -> tuple[str, str]:
    found = re.findall(r"^\[launch\] optuna study (\S+): optuna-dashboard (\S+)$", launch.stderr, re.MULTILINE)
    # One line, at the end of the launch, names the study and the command that shows it.
    assert len(found) == 1, launch.stderr[-2000:]
    return found[0]


def test_each_launch_keeps_its_study_with_one_trial_per_ray_trial(
    shared_workspace: Workspace, cls_launch: SharedLaunch, seg_launch: SharedLaunch
) -> None:
    client = MlflowClient(shared_workspace.tracking_uri)
    names = []
    for launch, experiment, metric in ((cls_launch, "whole_cls", METRIC), (seg_launch, "segmentation", "val/iou")):
        name, url = _study_line(launch)
        names.append(name)
        # The storage is optuna.db beside mlflow.db, and the parent run records it and the study's name.
        assert url == f"sqlite:///{(shared_workspace.root / 'optuna.db').resolve()}"
        parents, children = runs_of(client, experiment)
        parent = next(p for p in parents if p.data.tags.get(STUDY_TAGS[1]) == name)
        assert parent.data.tags[STUDY_TAGS[0]] == url
        children = {r.data.tags[TRIAL_TAG]: r for r in children if r.data.tags[PARENT_TAG] == parent.info.run_id}
        trials = optuna.load_study(study_name=name, storage=url).get_trials()
        # One Optuna trial per Ray trial, each named by its Ray trial id (the MLflow run's ray_trial_id tag) ...
        assert sorted(t.user_attrs[TRIAL_TAG] for t in trials) == sorted(children)
        for trial in trials:
            history = client.get_metric_history(children[trial.user_attrs[TRIAL_TAG]].info.run_id, metric)
            # ... with every epoch's objective as an intermediate value, as MLflow logged it ...
            assert trial.intermediate_values == {m.step: m.value for m in history} and history
            # ... and told what ASHA did: pruned, or complete with its best epoch.
            best = max(trial.intermediate_values.values())
            assert trial.state == TrialState.PRUNED or (trial.state == TrialState.COMPLETE and trial.value == best)
    # Both launches' studies are in the one file: the dashboard lists them side by side.
    assert set(names) <= set(optuna.get_all_study_names(url))


@pytest.mark.e2e
def test_a_resumed_searcher_continues_its_study(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = _searcher(url, "launch-1")
    tuner_pkl = pickle.dumps(searcher)  # what Tuner writes at construction, before any trial
    searcher.suggest("a"), searcher.suggest("b")
    _epochs(searcher, "a", {1: 0.4, 2: 0.6})
    _epochs(searcher, "b", {1: 0.3}, end=False)
    snapshot = str(tmp_path / "searcher-state.pkl")
    searcher.save(snapshot)  # Ray's last experiment snapshot before the kill
    _epochs(searcher, "b", {2: 0.5})  # told after the snapshot
    lost = searcher.suggest("c")  # asked after the snapshot: the restored Ray search never heard of trial c
    _epochs(searcher, "c", {1: 0.2}, end=False)

    restored = pickle.loads(tuner_pkl)  # Tuner.restore: tuner.pkl, then the latest snapshot
    restored.restore(snapshot)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no complaint about a trial told, or an epoch reported, before the kill
        _epochs(restored, "b", {2: 0.5})  # b resumes from its epoch-1 checkpoint
        # The next new Ray trial takes over the lost trial's Optuna trial, and so its configuration.
        assert restored.suggest("d") == lost
        _epochs(restored, "d", {1: 0.2, 2: 0.7})

    # Still one study, holding one trial per Ray trial that exists, each told once.
    assert optuna.get_all_study_names(url) == ["launch-1"]
    trials = optuna.load_study(study_name="launch-1", storage=url).get_trials()
    assert [t.user_attrs[TRIAL_TAG] for t in trials] == ["a", "b", "d"]
    assert [(t.state, t.value) for t in trials] == [(TrialState.COMPLETE, v) for v in (0.6, 0.5, 0.7)]
    assert trials[2].intermediate_values == {1: 0.2, 2: 0.7}


@pytest.mark.e2e
def test_launches_opening_a_fresh_storage_together_all_get_it(tmp_path: Path) -> None:
    url, errors = f"sqlite:///{tmp_path / 'optuna.db'}", []
    start = threading.Barrier(3)

    def launch(name: str) -> None:
        start.wait()
        try:
            optuna.create_study(storage=open_storage(url), study_name=name).ask().report(0.5, 1)
        except Exception as err:  # noqa: BLE001 - collected, asserted below
            errors.append(f"{name}: {err}")

    threads = [threading.Thread(target=launch, args=(f"launch-{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Unlocked, Optuna's table creation raced ("table studies already exists") in every try.
    assert not errors and sorted(optuna.get_all_study_names(url)) == ["launch-0", "launch-1", "launch-2"]


def test_the_storage_sits_beside_a_sqlite_store_else_beside_ray_results(tmp_path: Path) -> None:
    tmp_path = tmp_path.resolve()
    assert (
        study_storage(f"sqlite:///{tmp_path}/db/mlflow.db", tmp_path / "runs") == f"sqlite:///{tmp_path}/db/optuna.db"
    )
    assert study_storage("http://mlflow:5000", tmp_path / "runs") == f"sqlite:///{tmp_path}/runs/optuna.db"
