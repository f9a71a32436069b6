"""A nested launch's refusals before anything is written: masked tasks need each outer fold's own segmenter."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from medtune.config.options import LaunchOptions
from medtune.config.validate import SpaceError
from medtune.data import duplicates
from medtune.data.coco import resolve_dataset
from medtune.data.outer import outer_dataset, plan_outer
from medtune.tracking.registry import segmenter_name
from medtune.tracking.store import TrackingError
from trainables.nested import _check_segmenters, wanted


def _folds(synth_dir: Path, cache: Path):
    dataset = resolve_dataset(synth_dir, cache_root=cache)
    plan = plan_outer(dataset, 2, seed=0, cache_root=cache, near=duplicates.Setting())
    return plan, [outer_dataset(dataset, plan, k, cache_root=cache, seed=0) for k in range(2)]


def test_a_masked_nested_launch_needs_a_segmenter_per_outer_fold(synth_dir: Path, tmp_path: Path) -> None:
    plan, folders = _folds(synth_dir, tmp_path / "cache")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}", registry_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    options = LaunchOptions(space="masked_cls", data=synth_dir, cache_dir=tmp_path / "cache")
    with pytest.raises(
        TrackingError, match=r"outer fold 0 \(data-outer0of2\) has no segmenter trained without its images"
    ):
        _check_segmenters(client, options, plan, folders)
    # Fold 0's segmenter registered (by a nested segmentation launch): fold 1 is still refused, by name.
    fold0 = resolve_dataset(folders[0], cache_root=tmp_path / "cache")
    client.create_registered_model(segmenter_name(fold0.name, fold0.fingerprint))
    with pytest.raises(TrackingError, match=r"outer fold 1 .*--space segmentation --outer-folds 2 --seed 0 --data"):
        _check_segmenters(client, options, plan, folders)
    fold1 = resolve_dataset(folders[1], cache_root=tmp_path / "cache")
    client.create_registered_model(segmenter_name(fold1.name, fold1.fingerprint))
    _check_segmenters(client, options, plan, folders)  # every fold has its own: accepted


def test_one_segmenter_for_every_outer_fold_is_refused(synth_dir: Path, tmp_path: Path) -> None:
    plan, folders = _folds(synth_dir, tmp_path / "cache")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}", registry_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    options = LaunchOptions(space="masked_cls", segmenter="models:/seg-x/1", cache_dir=tmp_path / "cache")
    with pytest.raises(SpaceError, match="--outer-folds with --segmenter"):
        _check_segmenters(client, options, plan, folders)


def test_nested_is_asked_by_the_flag_or_the_space(tmp_path: Path) -> None:
    assert not wanted(LaunchOptions(space="whole_cls"))
    assert wanted(LaunchOptions(space="whole_cls", outer_folds=3))
    space = tmp_path / "nested_space.yaml"
    text = Path("search_spaces/whole_cls.yaml").read_text()
    space.write_text(text + "cv: {outer_folds: 4}\n")
    assert wanted(LaunchOptions(space=str(space)))
    assert not wanted(LaunchOptions(space=str(space), outer_folds=0))  # 0 turns the space's off
    with pytest.raises(SpaceError, match="--outer-folds: expected an integer >= 2"):
        wanted(LaunchOptions(space="whole_cls", outer_folds=1))
    space.write_text(text + "cv: {outer_folds: 1}\n")
    with pytest.raises(SpaceError, match="key 'cv.outer_folds': expected an integer >= 2, got 1"):
        wanted(LaunchOptions(space=str(space)))


def test_ctrl_c_in_a_nested_launch_stops_after_the_current_step_and_twice_at_once() -> None:
    import os
    import signal
    import time

    from trainables.nested import stop_between_stages

    before = signal.getsignal(signal.SIGINT)
    with stop_between_stages() as stopped:
        assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"  # Tune leaves SIGINT to the nested launch
        os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C: noted, the step goes on (SIGUSR1 does nothing here)
        time.sleep(0.1)
        assert stopped.is_set()
        with pytest.raises(KeyboardInterrupt):  # the second: at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is before and "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ
