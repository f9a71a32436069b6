"""Models from a store are code: a model whose stored code is not the installed medtune's is refused before
any of it runs (``predict.py``, the masked task's segmenter), unless ``--trust-model-code``; the network
is loaded with weights only, trusted or not. On a tiny segmenter logged by ``publish.log_model`` (no Ray)."""

from __future__ import annotations

import gc
import io
import json
import types
import uuid
import zipfile
from pathlib import Path

import mlflow
import mlflow.artifacts
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

import predict
from medtune.engine.segmenter_masks import load_segmenter
from medtune.models import SEG_MODELS
from medtune.publish.single import log_model
from medtune.serving.model import ModelFacts, SegmenterRef, load_network
from medtune.tracking.store import TrackingError

pytestmark = pytest.mark.e2e  # launches, Ray or a real server: run by ./test.sh, skipped by -m 'not e2e'

# The sha256 of src/medtune/pyfunc_model.py that every model logged so far stored (unchanged since the first).
# Changing the file makes every model logged before the change need --trust-model-code: say so in the README.
RELEASED_CODE = "e2d687b9d67ded41c4eb5322afe4351f28893e8d4811d5ceaf9fbd3045c22caa"


def log_tiny_segmenter(root: Path, name: str = "seg-tiny") -> str:
    """A fresh sqlite store under ``root`` (artifacts there too) with a tiny U-Net logged as ``launch.py`` logs
    its winners, registered as ``name`` version 1; returns the store's URI."""
    uri = f"sqlite:///{root / f'mlflow-{uuid.uuid4().hex}.db'}"  # unique: MLflow caches a store per URI
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.create_experiment("trust", artifact_location=(root / "artifacts").as_uri())
    torch.manual_seed(0)
    network = SEG_MODELS["unet"](width=4, depth=2).eval()
    facts = ModelFacts(
        task="segmentation", report_kind="segmentation", activation="sigmoid", image_size=32, threshold=0.5
    )
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    run = MlflowClient(uri).create_run(experiment).info.run_id
    log_model(run, types.SimpleNamespace(model=network), facts, images, name)
    MlflowClient(uri).set_terminated(run)
    return uri


def stored_copy(uri: str, model_uri: str, folder: Path, change) -> str:  # noqa: ANN001 - change(folder) edits files
    """A changed copy of ``model_uri`` logged in the same store; returns its ``runs:/<run>/model`` URI."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(folder)))
    change(local)
    client = MlflowClient(uri)
    run = client.create_run(client.get_experiment_by_name("trust").experiment_id).info.run_id
    client.log_artifacts(run, str(local), "model")
    return f"runs:/{run}/model"


def marking_code(marker: Path):  # noqa: ANN201 - a change for stored_copy
    """Prepend to the stored pyfunc_model.py a line that creates ``marker`` when the file is executed."""

    def change(folder: Path) -> None:
        code = folder / "pyfunc_model.py"
        code.write_text(f"open({str(marker)!r}, 'w').close()\n" + code.read_text())

    return change


class _Opens:
    """Unpickled, it opens (creates) a file: what a crafted weight file could do instead."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


def marking_network(marker: Path):  # noqa: ANN201 - a change for stored_copy
    """Make the stored network's first weight a pickle (torch.export's use_pickle) that creates ``marker``."""

    def change(folder: Path) -> None:
        network = folder / "artifacts" / "network.pt2"
        payload = io.BytesIO()
        torch.save(_Opens(str(marker)), payload)
        original = zipfile.ZipFile(io.BytesIO(network.read_bytes()))
        config_name = next(n for n in original.namelist() if n.endswith("weights/model_weights_config.json"))
        config = json.loads(original.read(config_name))
        first = next(iter(config["config"].values()))
        first["use_pickle"] = True
        with zipfile.ZipFile(network, "w") as crafted:
            for info in original.infolist():
                data = original.read(info.filename)
                if info.filename == config_name:
                    data = json.dumps(config).encode()
                elif info.filename.endswith(f"weights/{first['path_name']}"):
                    data = payload.getvalue()
                crafted.writestr(info, data)

    return change


def without_recorded_hash(folder: Path) -> None:
    """The MLmodel as models logged before the code's hash was recorded."""
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    del mlmodel["metadata"]["medtune"]["code_sha256"]
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return log_tiny_segmenter(tmp_path_factory.mktemp("trust"))


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("image") / "scan.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(path)
    return path


def run_predict(store: str, model: str, image: Path, out: Path, *flags: str) -> int:
    argv = ["--model", model, "--input", str(image), "--out", str(out), "--tracking-uri", store, *flags]
    return predict.main(argv)


def one_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_logged_model_records_the_hash_of_the_installed_code(store: str, tmp_path: Path) -> None:
    from medtune.serving import (
        trust as model_trust,  # imported here: the other tests run against code without the module too
    )

    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri="models:/seg-tiny/1", dst_path=str(tmp_path)))
    recorded = yaml.safe_load((folder / "MLmodel").read_text())["metadata"]["medtune"]["code_sha256"]
    # The stored file is the installed one, and the metadata says which.
    assert recorded == model_trust.code_sha256(folder / "pyfunc_model.py") == model_trust.code_sha256()
    assert model_trust.refusal(folder) is None
    # The file models run is the one every released model stored: an edit must be deliberate (module docstring).
    assert model_trust.code_sha256() == RELEASED_CODE


def test_model_logged_today_loads(store: str, image: Path, tmp_path: Path) -> None:
    assert run_predict(store, "models:/seg-tiny/1", image, tmp_path) == 0
    assert (tmp_path / "predictions.json").is_file()


def test_changed_code_is_refused_unrun_unless_trusted(
    store: str, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "code-ran"
    changed = stored_copy(store, "models:/seg-tiny/1", tmp_path / "copy", marking_code(marker))
    assert run_predict(store, changed, image, tmp_path / "out") == 2
    # Refused in one line naming the model and the flag, before the stored code ran; nothing written.
    err = one_line(capsys)
    assert changed in err and "--trust-model-code" in err and "changed after logging" in err
    assert not marker.exists() and not (tmp_path / "out").exists()
    # The masked task's segmenter: refused the same way, and its stored code never runs even when trusted.
    with pytest.raises(TrackingError, match="--trust-model-code"):
        load_segmenter(changed)
    assert not marker.exists()
    assert isinstance(load_segmenter(changed, trust_code=True), torch.nn.Module) and not marker.exists()
    # Trusted by the user: it loads (and so its code runs).
    assert run_predict(store, changed, image, tmp_path / "out", "--trust-model-code") == 0
    assert marker.exists() and (tmp_path / "out" / "predictions.json").is_file()


def test_crafted_network_is_refused_even_trusted(
    store: str, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "pickle-ran"
    crafted = stored_copy(store, "models:/seg-tiny/1", tmp_path / "copy", marking_network(marker))
    network = tmp_path / "copy" / "artifacts" / "network.pt2"
    # torch.export.load unpickles that weight with weights_only=False: loaded with weights only, refused.
    with pytest.raises(ValueError, match="weights only"):
        load_network(network)
    assert not marker.exists()
    assert run_predict(store, crafted, image, tmp_path / "out", "--trust-model-code") == 2
    assert "weights only" in one_line(capsys) and not marker.exists()
    with pytest.raises(TrackingError, match="weights only"):
        load_segmenter(crafted, trust_code=True)
    assert not marker.exists()


def test_model_logged_before_the_hash_was_recorded(
    store: str, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # Its stored code is the installed one: it loads as before.
    older = stored_copy(store, "models:/seg-tiny/1", tmp_path / "older", without_recorded_hash)
    assert run_predict(store, older, image, tmp_path / "out") == 0
    # With other code and no hash to tell what it was: refused, saying it predates the hash.
    marker = tmp_path / "code-ran"

    def older_and_other(folder: Path) -> None:
        without_recorded_hash(folder)
        marking_code(marker)(folder)

    other = stored_copy(store, "models:/seg-tiny/1", tmp_path / "other", older_and_other)
    assert run_predict(store, other, image, tmp_path / "out2") == 2
    err = one_line(capsys)
    assert "logged before medtune recorded the code's hash" in err and "--trust-model-code" in err
    assert not marker.exists()


def test_foreign_model_is_refused_unless_trusted(
    store: str, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    with mlflow.start_run(experiment_id=MlflowClient(store).get_experiment_by_name("trust").experiment_id):
        info = mlflow.pytorch.log_model(
            SEG_MODELS["unet"](width=4, depth=2).eval(),
            name="model",
            input_example=np.zeros((2, 3, 32, 32), np.float32),
            pip_requirements=[],
            serialization_format="pt2",
        )
    assert run_predict(store, info.model_uri, image, tmp_path / "out") == 2
    assert "not a medtune model" in one_line(capsys)
    # The masked task's segmenter (launch.py --trust-model-code): refused, then loaded when trusted.
    with pytest.raises(TrackingError, match="not a medtune model.*--trust-model-code"):
        load_segmenter(info.model_uri)
    assert isinstance(load_segmenter(info.model_uri, trust_code=True), torch.nn.Module)


def test_masked_classifier_checks_its_segmenter_with_the_callers_trust(
    store: str, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "code-ran"
    changed = stored_copy(store, "models:/seg-tiny/1", tmp_path / "copy", marking_code(marker))
    mlflow.register_model(changed, "seg-changed")
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    facts = ModelFacts(
        "masked_cls",
        "classification",
        "softmax",
        32,
        classes=("a", "b"),
        segmenter=SegmenterRef("seg-changed", "1", 32),
    )
    client = MlflowClient(store)
    run = client.create_run(client.get_experiment_by_name("trust").experiment_id).info.run_id
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    model = log_model(run, types.SimpleNamespace(model=network.eval()), facts, images).model_uri
    capsys.readouterr()  # MLflow's warning: logging could not try the input example (the segmenter is refused)
    # The classifier's code is medtune's; the segmenter it loads in turn is refused, named, in one line.
    assert run_predict(store, model, image, tmp_path / "out") == 2
    assert f"{model}: its segmenter models:/seg-changed/1" in one_line(capsys) and not marker.exists()
    # The caller's --trust-model-code holds for the segmenter too, whose network is read without its code.
    assert run_predict(store, model, image, tmp_path / "out", "--trust-model-code") == 0
    assert (tmp_path / "out" / "predictions.csv").is_file() and not marker.exists()


def test_downloaded_files_last_as_long_as_the_model(store: str) -> None:
    from medtune.serving import trust as model_trust

    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    model = model_trust.load_pyfunc("models:/seg-tiny/1").unwrap_python_model()
    network = Path(model.network_file)
    # A loaded model may re-read its network (moved to a GPU): its files stay while it lives ...
    assert network.is_file()
    del model
    model_trust.load_pyfunc("models:/seg-tiny/1")  # MLflow holds on to the last model it loaded
    gc.collect()
    # ... and go with it.
    assert not network.exists()
