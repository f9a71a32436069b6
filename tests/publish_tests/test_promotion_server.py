"""Promotion on a tracking server: two launch processes finishing together leave the better champion."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from medtune.tracking.registry import PROMOTION_TAG, champion, promotion_reason
from tests.trainables_tests.test_resilience import TrackingServer

pytestmark = pytest.mark.e2e  # launches, Ray or a real server: run by ./test.sh, skipped by -m 'not e2e'

TAGS = {"metric": "val/iou", "image_size": "64", "dataset_fingerprint": "abc"}
FIRST, BETTER, WORSE = 0.5, 0.7, 0.6
# Each process pauses after deciding, before moving the alias, the worse one longer: without a
# compare-and-set both decide against FIRST and the worse one moves the alias last.
PAUSE_S = {BETTER: 0.3, WORSE: 1.5}

# One launch's end, in a process of its own: register a version of the run, then promote it (the real
# functions; ``_decide`` followed by the pause above). It waits for the file ``go`` to start.
LAUNCH = """
import sys, time
from pathlib import Path
from mlflow.tracking import MlflowClient
import medtune.tracking.registry as registry


uri, name, score, pause, folder = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), Path(sys.argv[5])
client = MlflowClient(uri, registry_uri=uri)
run_id = client.create_run(client.get_experiment_by_name("promotion").experiment_id).info.run_id
decide = registry._decide

def paused(*args):
    verdict = decide(*args)
    time.sleep(pause)
    return verdict

registry._decide = paused
(folder / f"ready-{score}").touch()
while not (folder / "go").exists():
    time.sleep(0.01)
tags = {**TAGS, "val_score": repr(score)}
version = registry.register_version(client, name, f"s3://medtune-test/{name}/{score}", run_id=run_id, model_id=None, tags=tags)
promoted = registry.promote_if_better(client, name, version, score, "max")
print(version, promoted)
""".replace("TAGS", repr(TAGS))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackingServer]:
    server = TrackingServer(tmp_path_factory.mktemp("promotion_server"))
    server.start()
    MlflowClient(server.url).create_experiment("promotion")
    yield server
    server.stop()


def finish_together(server: TrackingServer, name: str, folder: Path) -> dict[float, tuple[str, bool]]:
    """BETTER and WORSE launch processes registering and promoting at the same moment: {score: (version, promoted)}."""
    procs = {
        score: subprocess.Popen(
            [sys.executable, "-c", LAUNCH, server.url, name, str(score), str(PAUSE_S[score]), str(folder)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for score in (BETTER, WORSE)
    }
    deadline = time.monotonic() + 120
    while not all((folder / f"ready-{s}").exists() for s in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    (folder / "go").touch()
    outcome = {}
    for score, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-2000:]
        version, promoted = out.split()[-2:]
        outcome[score] = (version, promoted == "True")
    return outcome


@pytest.mark.slow
@pytest.mark.parametrize("repeat", range(2))
def test_two_processes_promoting_on_a_tracking_server_leave_the_better_champion(
    server: TrackingServer, tmp_path: Path, repeat: int
) -> None:
    client, name = MlflowClient(server.url, registry_uri=server.url), f"seg-server{repeat}-00000000"
    client.create_registered_model(name)
    first = client.create_model_version(
        name, f"s3://medtune-test/{name}/first", tags={**TAGS, "val_score": repr(FIRST)}
    ).version
    client.set_registered_model_alias(name, "champion", first)
    outcome = finish_together(server, name, tmp_path)
    (better, better_promoted), (worse, worse_promoted) = outcome[BETTER], outcome[WORSE]
    # Whichever process went first, the better version holds the alias and says it was promoted.
    assert str(champion(client, name).version) == better
    assert better_promoted and "better than" in promotion_reason(client, name, better)
    # The worse one was either kept out, or promoted first and then beaten: never the last word.
    assert worse_promoted == ("champion kept" not in promotion_reason(client, name, worse))
    # Both promotions decided: nothing left pending for a later launch to wait on.
    assert {client.get_model_version(name, v).tags[PROMOTION_TAG] for v in (better, worse)} != {"pending"}
