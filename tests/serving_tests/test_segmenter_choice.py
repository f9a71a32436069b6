"""Which segmenter a masked task uses, and which masks: foreign segmenters are refused, and a reset
store with a kept cache folder gets fresh masks (the cache is keyed by the model, not its name); a segmenter
that is not medtune's is loaded only with ``--trust-model-code``."""

from __future__ import annotations

import types
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from medtune.config.options import LaunchOptions
from medtune.data.cache import load_cache
from medtune.data.coco import resolve_dataset
from medtune.models import SEG_MODELS
from medtune.prepare.segmenter_choice import mask_caches, resolve_segmenter
from medtune.publish.single import log_model
from medtune.serving.model import ModelFacts
from medtune.tracking.registry import CHAMPION, segmenter_name
from medtune.tracking.store import TrackingError

pytestmark = pytest.mark.e2e  # launches, Ray or a real server: run by ./test.sh, skipped by -m 'not e2e'


def store(tmp_path: Path) -> str:
    # A unique file: MLflow caches one store per URI, and pytest may reuse a deleted tmp_path's name.
    return f"sqlite:///{tmp_path / f'mlflow-{uuid.uuid4().hex}.db'}"


def log_segmenter(uri: str, name: str, seed: int, tags: dict[str, str], *, medtune: bool = True) -> None:
    """Log a tiny random U-Net as a new version of ``name`` in the fresh store ``uri``, as publish_best does
    (``medtune``), or as an ``mlflow.pytorch`` model (not medtune's: a segmenter of another tool)."""
    torch.manual_seed(seed)
    model = SEG_MODELS["unet"](width=4, depth=2).eval()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri)
    artifacts = Path(uri.removeprefix("sqlite:///")).with_suffix("")  # beside the store, not in the working folder
    run = client.create_run(client.create_experiment("seg", artifact_location=artifacts.as_uri())).info.run_id
    if medtune:
        facts = ModelFacts("segmentation", "segmentation", "sigmoid", image_size=32, threshold=0.5)
        images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
        info = log_model(run, types.SimpleNamespace(model=model), facts, images, name)
    else:
        with mlflow.start_run(run_id=run):
            info = mlflow.pytorch.log_model(
                model,
                name="model",
                registered_model_name=name,
                input_example=np.zeros((2, 3, 32, 32), np.float32),
                pip_requirements=[],
                serialization_format="pt2",
            )
    client.set_terminated(run)
    version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, CHAMPION, version)


@pytest.fixture(scope="module")
def dataset(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    return resolve_dataset(synth_dir, cache_root=tmp_path_factory.mktemp("cache"))


def test_reset_store_with_kept_cache_gets_fresh_masks(dataset, tmp_path: Path) -> None:
    name, cache = segmenter_name(dataset.name, dataset.fingerprint), tmp_path / "cache"
    tags = {"image_size": "32", "dataset_fingerprint": dataset.fingerprint}
    probs = []
    # mlflow.pytorch models (faster to log than log_model's export and example) need --trust-model-code.
    options = LaunchOptions(space="masked_cls", trust_model_code=True)
    for seed in (0, 1):  # two stores, each with its own "v1": the second is the store after a reset
        uri = store(tmp_path)
        log_segmenter(uri, name, seed, tags, medtune=False)
        segmenter = resolve_segmenter(MlflowClient(uri), dataset, options)
        assert segmenter.version == "1"
        files, _ = mask_caches(segmenter, dataset, [32], cache)
        probs.append(load_cache(files[32]["test"])["probs"])
    # Same name and version, other weights: the second launch computed its own masks.
    assert not torch.equal(probs[0], probs[1])
    assert len(list((cache / "masks").iterdir())) == 2


def test_segmenter_of_another_dataset_is_refused_unless_allowed(dataset, tmp_path: Path) -> None:
    uri, name = store(tmp_path), "seg-other-12345678"
    log_segmenter(uri, name, 0, {"image_size": "32", "dataset_fingerprint": "0" * 16, "dataset": "/data/other"})
    options = LaunchOptions(space="masked_cls", segmenter=f"models:/{name}/1")
    # Its training split may hold this dataset's test images: one line saying why and what to do.
    with pytest.raises(TrackingError, match="not on this one.*--allow-foreign-segmenter") as err:
        resolve_segmenter(MlflowClient(uri), dataset, options)
    assert "\n" not in str(err.value)
    allowed = LaunchOptions(space="masked_cls", segmenter=f"models:/{name}/1", allow_foreign_segmenter=True)
    assert resolve_segmenter(MlflowClient(uri), dataset, allowed).foreign


def test_segmenter_not_logged_by_medtune_needs_trust_model_code(dataset, tmp_path: Path) -> None:
    uri, name = store(tmp_path), segmenter_name(dataset.name, dataset.fingerprint)
    tags = {"image_size": "32", "dataset_fingerprint": dataset.fingerprint}
    log_segmenter(uri, name, 0, tags, medtune=False)
    segmenter = resolve_segmenter(MlflowClient(uri), dataset, LaunchOptions(space="masked_cls"))
    # Loading it is MLflow's (and its stored files') business: refused in one line before any mask is drawn.
    with pytest.raises(TrackingError, match="not a medtune model.*--trust-model-code") as err:
        mask_caches(segmenter, dataset, [32], tmp_path / "cache")
    assert "\n" not in str(err.value) and not (tmp_path / "cache" / "masks").exists()
    trusted = resolve_segmenter(MlflowClient(uri), dataset, LaunchOptions(space="masked_cls", trust_model_code=True))
    files, _ = mask_caches(trusted, dataset, [32], tmp_path / "cache")
    assert load_cache(files[32]["test"])["probs"].shape[-1] == 32
