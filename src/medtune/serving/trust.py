"""Models from a store are code: a stored model is checked, downloaded and unloaded, before anything in it runs.

MLflow loads a medtune model (``medtune.publish.single.log_model``) by executing the ``pyfunc_model.py``
stored with it ("models from code") and importing the loader its ``MLmodel`` names. So whoever can
write to the tracking store or its artifact storage can run code as whoever loads a model. Here a
model's files are first downloaded without being loaded, and loaded only when they are what this
medtune logs:

* the ``MLmodel`` has medtune's facts (``metadata.medtune``), MLflow's models-from-code loader and no
  ``code`` folder (which MLflow would put on ``sys.path``);
* the stored ``pyfunc_model.py`` is byte for byte the installed one (sha256), and so is the hash
  recorded when the model was logged (``metadata.medtune.code_sha256``) when there is one.

Models logged before the hash was recorded have no ``code_sha256``: they load when their stored code
is the installed one (the check is on the bytes that would run; ``pyfunc_model.py`` has not changed
since models were first logged, ``tests/serving_tests/test_model_trust.py`` pins it). Editing that file therefore
makes every model logged before the edit need ``--trust-model-code``.

Anything else (another medtune's code, a changed file, a model that is not medtune's) is refused in
one line naming the model, unless the user, having read the model's source, passes
``--trust-model-code``. Trusted or not, the network itself is loaded with weights only
(``medtune.serving.network.load_network``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import weakref
from contextvars import ContextVar
from pathlib import Path

import yaml

from medtune.tracking.store import TrackingError

CODE_FILE = Path(__file__).with_name("pyfunc_model.py")  # what log_model stores and MLflow runs
LOADER = "mlflow.pyfunc.loaders.code_model"  # MLflow's loader of models from code
TRUST_FLAG = "--trust-model-code"
# The trust of the load_pyfunc in progress, for what MedtuneModel.load_context loads in turn (a masked
# classifier's segmenter): MLflow passes nothing else through (model_config needs it at logging time).
_TRUSTED: ContextVar[bool] = ContextVar("medtune_trust_model_code", default=False)


class UntrustedModel(TrackingError):
    """A stored model whose code is not the installed medtune's, as one line."""


def code_sha256(path: Path = CODE_FILE) -> str:
    """sha256 (hex) of a model code file; by default the installed ``pyfunc_model.py``."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fetch(model_uri: str, into: Path) -> Path:
    """Download the files of ``model_uri`` (``models:/``, ``runs:/``) into ``into``; nothing is loaded or run."""
    import mlflow.artifacts

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(into)))
    except Exception as err:  # noqa: BLE001 - not found, no such alias, unreachable: one line either way
        why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TrackingError(f"{model_uri}: cannot download it ({why[:300]})") from None


def refusal(folder: Path) -> str | None:
    """Why the downloaded model in ``folder`` is not safe to load with this medtune, or None when it is."""
    try:
        mlmodel = yaml.safe_load((folder / "MLmodel").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return "no readable MLmodel file: not an MLflow model"
    mlmodel = mlmodel if isinstance(mlmodel, dict) else {}
    facts = (mlmodel.get("metadata") or {}).get("medtune")
    pyfunc = (mlmodel.get("flavors") or {}).get("python_function") or {}
    if not isinstance(facts, dict) or not isinstance(pyfunc, dict):
        return "not a medtune model (no medtune facts in its MLmodel metadata)"
    code_path = os.path.basename(str(pyfunc.get("model_code_path")))  # how MLflow finds the file it runs
    if pyfunc.get("loader_module") != LOADER or pyfunc.get("code") or code_path != CODE_FILE.name:
        return f"its MLmodel loads other code than medtune's {CODE_FILE.name} (loader {pyfunc.get('loader_module')})"
    if not (folder / CODE_FILE.name).is_file():
        return f"no {CODE_FILE.name} stored with it"
    stored, installed, recorded = code_sha256(folder / CODE_FILE.name), code_sha256(), facts.get("code_sha256")
    if recorded is not None and recorded != stored:
        return f"its {CODE_FILE.name} (sha256 {stored[:12]}) was changed after logging (recorded {str(recorded)[:12]})"
    if stored != installed:
        before = ", logged before medtune recorded the code's hash" if recorded is None else ""
        return f"its {CODE_FILE.name} (sha256 {stored[:12]}{before}) is not the installed medtune's ({installed[:12]})"
    return None


def checked(model_uri: str, into: Path, *, trust: bool = False) -> Path:
    """The files of ``model_uri``, downloaded into ``into``; raises :class:`UntrustedModel` unless ``trust``."""
    folder = fetch(model_uri, into)
    why = refusal(folder)
    if why is not None and not trust:
        raise UntrustedModel(f"{model_uri}: {why}; read its source, then pass {TRUST_FLAG} to load it anyway")
    return folder


def load_pyfunc(model_uri: str, *, trust: bool = False):  # noqa: ANN201 - mlflow.pyfunc.PyFuncModel, imported lazily
    """``mlflow.pyfunc.load_model`` of ``model_uri`` once :func:`checked`; its files live as long as the model.

    ``trust`` also holds for what the model loads in turn (a masked classifier's segmenter: :func:`trusted`).
    """
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    files = tempfile.TemporaryDirectory(prefix="medtune-model-")
    try:
        folder = checked(model_uri, Path(files.name), trust=trust)
        token = _TRUSTED.set(trust)
        try:
            loaded = mlflow.pyfunc.load_model(str(folder))
        finally:
            _TRUSTED.reset(token)
    except BaseException:
        files.cleanup()
        raise
    try:
        owner = loaded.unwrap_python_model()  # what callers keep (a GPU re-reads its network file)
    except MlflowException:
        owner = loaded
    weakref.finalize(owner, files.cleanup)  # MLflow keeps the last model loaded: at exit at the latest
    return loaded


def trusted() -> bool:
    """Whether the :func:`load_pyfunc` in progress was given ``trust`` (False outside one)."""
    return _TRUSTED.get()
