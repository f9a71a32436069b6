"""MLflow as its users expect: user, source and git commit tags, dataset inputs, descriptions.

Read from MLflow alone (``MlflowClient``) on the session's shared launches (conftest ``cls_launch``:
train/val/test; ``seg_launch``: 2-fold cross-validation); the helpers' edge cases (no git, not the
top of a repository, a description already written) are checked directly.
"""

from __future__ import annotations

import getpass
import subprocess
from pathlib import Path

import mlflow.data
import pytest
from mlflow.tracking import MlflowClient

from medtune.config.spaces import available, header_comment, load_space
from medtune.data.coco import resolve_dataset
from medtune.tracking.provenance import CODE_DIR as PROJECT_DIR
from medtune.tracking.provenance import describe_experiment, git_commit, standard_tags, trial_inputs
from medtune.tracking.store import open_client
from tests.helpers import Workspace, runs_of

NOTE = "mlflow.note.content"


def test_header_comment_is_the_leading_comment_block() -> None:
    text = "\n# Which model wins?\n#   python launch.py --space x\n#\n# Second paragraph.\ntask: x  # not this\n# nor this\n"
    # Blank lines before it are skipped, "# " is dropped (deeper indentation kept), the first key ends it.
    assert header_comment(text) == "Which model wins?\n  python launch.py --space x\n\nSecond paragraph."
    # A file that starts with a key has no description.
    assert header_comment("task: x\n# later\n") == ""


@pytest.mark.parametrize("name", available())
def test_every_space_file_describes_its_experiment(name: str) -> None:
    # Every shipped space opens with the question it asks: its experiment's description in the UI.
    space = load_space(name)
    assert space.description and not space.description.startswith("#")
    # --smoke keeps it (the smoke block is merged after the header is read).
    assert load_space(name, smoke=True).description == space.description


def test_git_commit_only_at_the_top_of_a_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A folder outside any repository, and a folder inside this one that is not its top: no commit.
    assert git_commit(tmp_path) is None
    assert git_commit(PROJECT_DIR / "src") is None
    if (PROJECT_DIR / ".git").exists():
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_DIR, capture_output=True, text=True)
        assert git_commit(PROJECT_DIR) == head.stdout.strip()
    # No git on the PATH: no commit and no crash; the other tags are still there.
    monkeypatch.setenv("PATH", str(tmp_path))
    assert git_commit(PROJECT_DIR) is None
    assert set(standard_tags()) == {"mlflow.user", "mlflow.source.name", "mlflow.source.type"}


@pytest.mark.e2e
def test_experiment_description_is_written_once(tmp_path: Path) -> None:
    client = open_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    fresh, edited = client.create_experiment("fresh"), client.create_experiment("edited")
    client.set_experiment_tag(edited, NOTE, "written by hand in the UI")
    for exp_id in (fresh, edited):
        describe_experiment(client, exp_id, "Which model wins?")
    # A new experiment gets the space's description; one that has a description keeps it.
    assert client.get_experiment(fresh).tags[NOTE] == "Which model wins?"
    assert client.get_experiment(edited).tags[NOTE] == "written by hand in the UI"


def _parent(ws: Workspace, experiment: str) -> mlflow.entities.Run:
    client = MlflowClient(ws.tracking_uri, registry_uri=ws.tracking_uri)
    launches = runs_of(client, experiment)[0]
    assert len(launches) == 1, [r.info.run_id for r in launches]
    return launches[0]


def _inputs(run: mlflow.entities.Run) -> dict[str, mlflow.entities.DatasetInput]:
    """The run's dataset inputs by context (``mlflow.data.context``)."""
    return {{t.key: t.value for t in i.tags}["mlflow.data.context"]: i for i in run.inputs.dataset_inputs}


def test_parent_run_has_standard_tags_and_description(shared_workspace: Workspace, cls_launch: object) -> None:
    parent = _parent(shared_workspace, "whole_cls")
    tags = parent.data.tags
    # MLflow's UI columns: User (not "unknown"), Source (the launcher, run locally) and its git commit.
    assert tags["mlflow.user"] == getpass.getuser()
    assert (tags["mlflow.source.name"], tags["mlflow.source.type"]) == ("launch.py", "LOCAL")
    assert tags.get("mlflow.source.git.commit") == git_commit(PROJECT_DIR)
    # The space file's header comment describes the run and its experiment.
    description = load_space("whole_cls").description
    assert tags[NOTE] == description
    client = MlflowClient(shared_workspace.tracking_uri, registry_uri=shared_workspace.tracking_uri)
    assert client.get_experiment(parent.info.experiment_id).tags[NOTE] == description


def test_parent_run_logs_each_split_it_uses(
    shared_workspace: Workspace, cls_launch: object, synth_dir: Path, tmp_path: Path
) -> None:
    dataset = resolve_dataset(synth_dir, cache_root=tmp_path)
    inputs = _inputs(_parent(shared_workspace, "whole_cls"))
    # Without cross-validation: train, val and test, each a dataset of its own name (MLflow keeps one
    # input per name and digest), all with the dataset's fingerprint as digest.
    assert sorted(inputs) == ["test", "train", "val"]
    for split, given in inputs.items():
        assert given.dataset.name == f"{dataset.name}-{split}"
        assert given.dataset.digest == dataset.fingerprint
        # The source is the split's COCO file, readable back with MLflow's own API.
        assert mlflow.data.get_source(given).uri == str(dataset.coco_files[split])
        assert {t.key: t.value for t in given.tags}["split_digest"] == dataset.content_digests[split][:12]
    # The profile counts the images: 30 / 9 / 9 in the session's synthetic set.
    assert [inputs[s].dataset.profile for s in ("train", "val", "test")] == [
        '{"images": 30}',
        '{"images": 9}',
        '{"images": 9}',
    ]


def test_cross_validated_run_logs_the_pool_and_test(shared_workspace: Workspace, seg_launch: object) -> None:
    client = MlflowClient(shared_workspace.tracking_uri, registry_uri=shared_workspace.tracking_uri)
    parent = _parent(shared_workspace, "segmentation")
    inputs = _inputs(parent)
    # With --folds the trials train and score on the pooled train+val (39 images); test stays apart.
    assert sorted(inputs) == ["test", "train+val"]
    pool = inputs["train+val"]
    assert pool.dataset.digest == parent.data.tags["dataset_fingerprint"]
    assert mlflow.data.get_source(pool).uri == parent.data.tags["dataset"]
    assert pool.dataset.profile == '{"images": 39}'
    pool_tags = {t.key: t.value for t in pool.tags}
    assert (pool_tags["cv_folds"], pool_tags["cv_folds_digest"]) == ("2", parent.data.tags["cv_folds_digest"])
    # What a trial would log: the parent's inputs less the test split, which no trial sees.
    assert [i.dataset.name for i in trial_inputs(client, parent.info.run_id)] == [pool.dataset.name]


def test_trial_runs_carry_the_standard_tags_and_their_splits(shared_workspace: Workspace, cls_launch: object) -> None:
    client = MlflowClient(shared_workspace.tracking_uri, registry_uri=shared_workspace.tracking_uri)
    parents, children = runs_of(client, "whole_cls")
    parent = parents[0]
    assert children
    for run in children:
        # The UI's User and Source columns, as on the parent run ...
        assert run.data.tags["mlflow.user"] == parent.data.tags["mlflow.user"]
        assert run.data.tags["mlflow.source.name"] == "launch.py"
        # ... and the splits the trial trained and validated on: never the test split.
        assert sorted(_inputs(run)) == ["train", "val"]
