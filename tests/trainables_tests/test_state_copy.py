"""A launch killed while Ray Tune wrote its experiment state resumes from the last complete copy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainables.state_copy import COPY_SUFFIX, StateCopy, keep_copies, restore_cut_state


def _state(folder: Path, text: str) -> Path:
    path = folder / "experiment_state-2026-12-07_19-00-00.json"
    path.write_text(text)
    return path


def test_a_cut_state_file_is_replaced_by_its_last_complete_copy(tmp_path: Path) -> None:
    state = _state(tmp_path, json.dumps({"trial_data": [1, 2, 3]}))
    keep_copies(tmp_path)
    state.write_text('{"trial_data": [1, 2')  # a later write, cut by a kill
    keep_copies(tmp_path)  # a cut file never replaces the complete copy
    assert restore_cut_state(tmp_path) == [state.name]
    assert json.loads(state.read_text()) == {"trial_data": [1, 2, 3]}
    assert restore_cut_state(tmp_path) == []  # complete now: nothing to do


def test_a_cut_state_without_a_copy_is_left_for_tune_to_report(tmp_path: Path) -> None:
    state = _state(tmp_path, "")
    assert restore_cut_state(tmp_path) == [] and state.read_text() == ""
    assert not list(tmp_path.glob(f"*{COPY_SUFFIX}"))


@pytest.mark.e2e
def test_tune_keeps_a_complete_copy_after_each_state_write(tmp_path: Path) -> None:
    import ray
    from ray import tune

    def trainable(config: dict) -> None:
        for step in range(3):
            tune.report({"score": config["x"] + step})

    folder = tmp_path / "runs" / "search"
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        run = tune.RunConfig(name="search", storage_path=str(tmp_path / "runs"), callbacks=[StateCopy(str(folder))])
        tuner = tune.Tuner(trainable, param_space={"x": tune.grid_search([0, 1])}, run_config=run)
        tuner.fit()
    finally:
        ray.shutdown()
    (state,) = folder.glob("experiment_state-*.json")
    copy = state.with_name(state.name + COPY_SUFFIX)
    assert json.loads(copy.read_text())["trial_data"]  # complete, with both trials
    state.write_text(state.read_text()[:100])  # cut as a SIGKILL mid-write leaves it
    assert restore_cut_state(folder) == [state.name]
    assert tune.Tuner.can_restore(str(folder)) and len(tune.ExperimentAnalysis(str(folder)).trials) == 2
