"""Champion promotion compares like with like: same metric, mode, image size and dataset fingerprint."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from medtune.tracking.registry import CHAMPION, champion, promote_if_better, promotion_reason

pytestmark = pytest.mark.e2e  # launches, Ray or a real server: run by ./test.sh, skipped by -m 'not e2e'

NAME = "seg-test-00000000"
TAGS = {"metric": "val/iou", "image_size": "64", "dataset_fingerprint": "abc"}


@pytest.fixture
def client(tmp_path: Path) -> MlflowClient:
    # A unique file name: MLflow caches one store per URI, and pytest may reuse a deleted tmp_path's name.
    # registry_uri too: an earlier test in this process may have set MLflow's global registry URI.
    uri = f"sqlite:///{tmp_path / f'mlflow-{uuid.uuid4().hex}.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model(NAME)
    return client


def register(client: MlflowClient, tmp_path: Path, score: float, **tags: str) -> str:
    """A new version of NAME with the tags publish_best gives it (its score and what it was scored on)."""
    source = tmp_path / f"model-{score}"
    source.mkdir(exist_ok=True)
    version = client.create_model_version(NAME, str(source)).version
    for key, value in {**TAGS, "val_score": repr(score), **tags}.items():
        client.set_model_version_tag(NAME, version, key, value)
    return str(version)


def test_better_version_is_promoted_and_worse_is_kept_out(client: MlflowClient, tmp_path: Path) -> None:
    first = register(client, tmp_path, 0.5)
    assert promote_if_better(client, NAME, first, 0.5, "max")
    better = register(client, tmp_path, 0.7)
    assert promote_if_better(client, NAME, better, 0.7, "max")
    worse = register(client, tmp_path, 0.6)
    assert not promote_if_better(client, NAME, worse, 0.6, "max")
    # The alias stays on the better version, and the worse one says why it was kept out.
    assert str(champion(client, NAME).version) == better
    assert "champion kept" in promotion_reason(client, NAME, worse)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("image_size", "128"),
        ("dataset_fingerprint", "other"),
        ("metric", "val/dice"),
        ("selection", "5-fold cross-validation"),  # a fold mean vs a val-split score (the first has no tag)
    ],
)
def test_version_scored_differently_is_registered_not_promoted(
    client: MlflowClient, tmp_path: Path, key: str, value: str
) -> None:
    first = register(client, tmp_path, 0.5)
    promote_if_better(client, NAME, first, 0.5, "max")
    # A much higher score at another size, split or metric is not evidence of a better segmenter.
    other = register(client, tmp_path, 0.99, **{key: value})
    assert not promote_if_better(client, NAME, other, 0.99, "max")
    assert str(client.get_model_version_by_alias(NAME, CHAMPION).version) == first
    reason = promotion_reason(client, NAME, other)
    assert "not comparable" in reason and key in reason and value in reason


def test_mode_is_part_of_the_comparison(client: MlflowClient, tmp_path: Path) -> None:
    first = register(client, tmp_path, 0.5)
    promote_if_better(client, NAME, first, 0.5, "max")
    # The same metric name minimised is another objective: a lower score must not win under "min".
    other = register(client, tmp_path, 0.1)
    assert not promote_if_better(client, NAME, other, 0.1, "min")
    assert "mode max vs min" in promotion_reason(client, NAME, other)
