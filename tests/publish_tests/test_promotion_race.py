"""Champion promotion is a compare-and-set: of two launches promoting at once, the better ends as champion.

Threads of one process here; tests/publish_tests/test_promotion_server.py races two processes on a tracking server.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import medtune.tracking.registry as tracking
from medtune.tracking.registry import champion, promote_if_better, promotion_reason, register_version
from medtune.tracking.store import open_client

TAGS = {"metric": "val/iou", "image_size": "64", "dataset_fingerprint": "abc"}
FIRST, BETTER, WORSE = 0.5, 0.7, 0.6
REPEATS = 3
# Pause after deciding, before moving the alias: the worse launch pauses longer, so that without a
# compare-and-set both decide against FIRST and the worse one moves the alias last.
PAUSE_S = {BETTER: 0.1, WORSE: 0.4}


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('promotion') / 'mlflow.db'}"
    open_client(uri)  # created once for the module (seconds)
    return uri


@pytest.fixture
def slow_decisions(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real decision, followed by the pause PAUSE_S gives the version's score."""
    decide = tracking._decide

    def paused(client: MlflowClient, name: str, version: str, score: float, mode: str) -> tuple[bool, str]:
        verdict = decide(client, name, version, score, mode)
        time.sleep(PAUSE_S.get(score, 0.0))
        return verdict

    monkeypatch.setattr(tracking, "_decide", paused)


def register(client: MlflowClient, name: str, folder: Path, score: float) -> str:
    """A version of ``name`` registered as the publish registers it (``register_version``: a run's version,
    tagged with its score and what it was scored on, its promotion pending)."""
    source = folder / f"{name}-{score}"
    source.mkdir(exist_ok=True)
    experiment = client.get_experiment_by_name("race") or client.get_experiment(client.create_experiment("race"))
    run_id = client.create_run(experiment.experiment_id).info.run_id
    tags = {**TAGS, "val_score": repr(score)}
    return register_version(client, name, str(source), run_id=run_id, model_id=None, tags=tags)


@pytest.mark.e2e
@pytest.mark.parametrize("repeat", range(REPEATS))
@pytest.mark.usefixtures("slow_decisions")
def test_two_launches_promoting_at_once_leave_the_better_champion(uri: str, tmp_path: Path, repeat: int) -> None:
    client, name = MlflowClient(uri), f"seg-race{repeat}-00000000"
    client.create_registered_model(name)
    first = register(client, name, tmp_path, FIRST)
    assert promote_if_better(client, name, first, FIRST, "max")
    versions = {score: register(client, name, tmp_path, score) for score in (BETTER, WORSE)}
    start = threading.Barrier(2)

    def launch(score: float) -> bool:
        own = MlflowClient(uri)  # each launch has its own client, as separate processes would
        start.wait(timeout=30)
        return promote_if_better(own, name, versions[score], score, "max")

    with ThreadPoolExecutor(2) as pool:
        outcome = dict(zip((BETTER, WORSE), pool.map(launch, (BETTER, WORSE)), strict=True))
    # Whichever launch went first, the better version holds the alias and says it was promoted.
    assert str(champion(client, name).version) == versions[BETTER]
    assert outcome[BETTER] and "better than" in promotion_reason(client, name, versions[BETTER])
    # The worse one was either kept out, or promoted first and then beaten: never the last word.
    assert outcome[WORSE] == ("champion kept" not in promotion_reason(client, name, versions[WORSE]))
