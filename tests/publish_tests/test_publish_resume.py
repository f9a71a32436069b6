"""Publishing survives a tracking store that goes away: the parent run stays RUNNING, ``--resume`` publishes.

The store goes away at one publish write at a time: every ``MlflowClient`` write method (the launch's
client and the ones MLflow's model logging makes) is wrapped, and the ``n``-th call of one method fails
as a store that stopped answering does (a refused connection), before or after reaching the real store
(a lost answer). Everything else is the real sqlite store. The search runs once, in a launch process of
its own; each ``--resume`` after it publishes in this process (no Ray: the search had finished).
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from medtune.tracking.registry import CHAMPION, PENDING, PROMOTION_TAG
from medtune.tracking.store import LAUNCH_TAG
from tests.helpers import CLS_ARGS, PROJECT_DIR, Workspace

pytestmark = pytest.mark.e2e  # launches, Ray or a real server: run by ./test.sh, skipped by -m 'not e2e'

WRITES = (
    "log_batch", "log_metric", "log_param", "set_tag", "set_terminated", "update_run", "log_artifact", "log_artifacts",
    "log_dict", "log_text", "log_outputs", "create_logged_model", "log_model_artifacts", "finalize_logged_model",
    "create_registered_model", "create_model_version", "set_model_version_tag", "set_registered_model_alias",
    "update_model_version", "update_registered_model", "set_registered_model_tag",
)  # fmt: skip


def store_goes_away(method: str, nth: int, *, answer_lost: bool) -> None:
    """From the start of publishing, the ``nth`` call of ``MlflowClient.<method>`` fails as a store that went
    away (after the write reached the store when ``answer_lost``)."""
    import trainables.winner as driver

    calls = {"armed": False, "n": 0}
    real_method = getattr(MlflowClient, method)

    @functools.wraps(real_method)
    def away(self: MlflowClient, *args: object, **kwargs: object) -> object:
        if calls["armed"]:
            calls["n"] += 1
            if calls["n"] == nth:
                if answer_lost:
                    real_method(self, *args, **kwargs)
                raise requests.exceptions.ConnectionError(f"tracking store away (test: {method} #{nth})")
        return real_method(self, *args, **kwargs)

    publish = driver.publish_winner

    def armed(*args: object, **kwargs: object) -> None:
        calls["armed"] = True
        return publish(*args, **kwargs)

    setattr(MlflowClient, method, away)
    driver.publish_winner = armed


# The first launch, in a process of its own (its search starts Ray): the store goes away at the first
# version tag written, after the model was logged and registered.
FIRST_LAUNCH = """
import sys
from tests.publish_tests.test_publish_resume import store_goes_away
from trainables.launch import main
store_goes_away("set_model_version_tag", 1, answer_lost=False)
sys.exit(main(sys.argv[1:]))
"""
# Then each --resume: the store goes away at another step, until one publishes everything.
STEPS = [
    ("set_registered_model_alias", 1, True),  # the champion moved, the answer lost
    ("log_text", 1, False),  # the model card
    ("set_terminated", 1, False),  # the very end: the run is FINISHED last
]


@pytest.mark.slow
def test_store_away_at_each_publish_step_then_resume_publishes_once(
    tmp_path: Path, synth_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    workspace = Workspace(tmp_path)
    argv = [*CLS_ARGS, "--data", str(synth_dir), *workspace._common()]
    first = subprocess.run(
        [sys.executable, "-c", FIRST_LAUNCH, *argv],
        cwd=PROJECT_DIR,
        env=workspace._env(),
        capture_output=True,
        text=True,
    )
    client = MlflowClient(workspace.tracking_uri, registry_uri=workspace.tracking_uri)
    (parent,) = client.search_runs(["1"], f"tags.`{LAUNCH_TAG}` = 'true'")
    # The store went away while the winner was published: one line saying so and how to go on; the run RUNNING.
    assert first.returncode == 2 and "stopped answering while the winner was published" in first.stderr, first.stderr[
        -3000:
    ]
    assert parent.info.status == "RUNNING"
    from trainables import launch

    for method, nth, lost in STEPS:
        with monkeypatch.context() as patch:
            import trainables.winner as driver

            patch.setattr(MlflowClient, method, getattr(MlflowClient, method))  # restored after the step
            patch.setattr(driver, "publish_winner", driver.publish_winner)
            store_goes_away(method, nth, answer_lost=lost)
            code = launch.main([*argv, "--resume"])
        err = capsys.readouterr().err
        assert code == 2 and "stopped answering while the winner was published" in err, f"{method}: {err[-2000:]}"
        assert client.get_run(parent.info.run_id).info.status == "RUNNING", method
    assert launch.main([*argv, "--resume"]) == 0
    out = capsys.readouterr().out
    run = client.get_run(parent.info.run_id)
    name, version = run.data.tags["registered_model"].split("/")
    versions = client.search_model_versions(f"name='{name}'")
    # One version for the launch, promoted (the first of its name), its promotion decided; a model card.
    assert [v.version for v in versions] == [int(version)] and run.info.status == "FINISHED"
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == version
    tags = client.get_model_version(name, version).tags
    assert (
        tags[PROMOTION_TAG] != PENDING
        and tags["promoted"] == "true"
        and run.data.tags["promoted_to_champion"] == "true"
    )
    assert "model_card.md" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert client.get_model_version(name, version).description
    assert f"model {name}/{version} promoted to champion" in out
    # One logged model on the run, however many times publishing began.
    logged = client.search_logged_models(["1"], filter_string=f"source_run_id = '{run.info.run_id}'")
    assert len(logged) == 1
