"""After the search: test the best trial (and its retrains with more seeds), log the model (a
``medtune.serving.model.MedtuneModel`` pyfunc that carries what prediction needs), register it and promote it
to champion if it beats the current one. What the test evaluation records on the runs (scores, predictions,
the seed interval) is ``medtune.publish.evaluation``'s.

Registered names: segmenters ``seg-<dataset>-<fingerprint>`` (``tracking.segmenter_name``), other
models ``<space>-<dataset>-<fingerprint>`` (:func:`registered_name`), each with its own champion.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas
import PIL
import pytorch_lightning
import torch
import torchvision
from mlflow.entities import LoggedModelOutput
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient

from medtune.data.cache import load_cache
from medtune.engine.build import build_datamodule, task_spec
from medtune.engine.evaluate import test_metrics, test_predictions
from medtune.engine.recipe import Recipe
from medtune.engine.repeats import full_budget, headline
from medtune.publish.evaluation import log_cam_overlays, log_predictions, log_winner, over_seeds, saliency_ceiling
from medtune.scoring.bootstrap import SeedScore
from medtune.serving import trust as model_trust
from medtune.serving.model import FACTS_FILE, ModelFacts, SegmenterRef, network_inputs, signature
from medtune.tasks.base import BaseTask
from medtune.tracking.registry import (
    CHAMPION,
    SELECTION_DEFAULT,
    champion,
    promote_if_better,
    register_version,
    segmenter_name,
)
from medtune.tracking.store import retrying

PIP_REQUIREMENTS = [
    f"torch=={torch.__version__.split('+')[0]}",
    f"torchvision=={torchvision.__version__.split('+')[0]}",
]
# What loading a logged MedtuneModel imports besides torch (and the medtune package itself).
PYFUNC_REQUIREMENTS = [
    *PIP_REQUIREMENTS,
    f"pytorch-lightning=={pytorch_lightning.__version__}",
    f"pandas=={pandas.__version__}",
    f"pillow=={PIL.__version__}",
]


@dataclass(frozen=True)
class BestTrial:
    """The winner of a search, as plain values (no Ray objects)."""

    run_id: str  # its MLflow child run
    config: dict
    checkpoint_file: Path  # a cross-validated trial's checkpoint is the folder holding its fold files
    val_score: float
    metrics: dict | None = None  # what the trial reported with that checkpoint (fold scores under cv)


@dataclass(frozen=True)
class Published:
    test: dict[str, float]
    model_uri: str
    registered: str | None = None  # "name/version" for segmenters
    promoted: bool = False
    seeds: dict[str, SeedScore] | None = None  # per metric, over every seed (single-label classifiers)
    facts: ModelFacts | None = None  # what the logged model carries (its model card's preprocessing)


@dataclass(frozen=True)
class Lineage:
    """What a logged model must carry that its trial's configuration does not: the launch's side."""

    classes: tuple[str, ...] = ()  # the dataset's category names, in class-index order
    segmenter: SegmenterRef | None = None  # the registered segmenter a masked task's masks came from
    dataset_fingerprint: str = ""


def registered_name(space: str, task: str, dataset_name: str, fingerprint: str) -> str:
    """Registered-model name of a launch's winner: ``seg-<dataset>-<fp>`` for segmenters (the name masked
    tasks look their champion up by), ``<space>-<dataset>-<fp>`` for every other model."""
    name = segmenter_name(dataset_name, fingerprint)
    if task == "segmentation":
        return name
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in space)
    return f"{safe}-{name.removeprefix('seg-')}"


def model_facts(task: str, config: dict, system: BaseTask, lineage: Lineage) -> ModelFacts:
    """The facts a logged model carries (``medtune.serving.model.ModelFacts``), from the values training used.

    Mask mode, threshold and crop margin are read from the data module the configuration builds (its
    defaults included), the threshold and activation from the system.
    """
    data = build_datamodule(config, caches={})
    threshold = getattr(system, "threshold", None)
    masked = task_spec(task).needs_segmenter
    return ModelFacts(
        task=task,
        report_kind=system.report_kind,
        activation=system.activation,
        image_size=int(config["data.image_size"]),
        threshold=None if threshold is None else float(threshold),
        classes=tuple(lineage.classes) if system.report_kind != "segmentation" else (),
        mask_mode=data.mask_mode if masked else "none",
        mask_threshold=float(data.mask_threshold),
        crop_margin=float(data.crop_margin),
        segmenter=lineage.segmenter if masked else None,
        dataset_fingerprint=lineage.dataset_fingerprint,
    )


def publish_best(
    client: MlflowClient,
    *,
    parent_run_id: str,
    recipe: Recipe,
    best: BestTrial,
    register_as: str | None = None,
    version_tags: dict[str, str] | None = None,
    lineage: Lineage = Lineage(),
    repeats: int = 1,
) -> Published:
    """Evaluate ``best`` on the test split and record it on the parent run (and registry).

    ``recipe`` is how the search trained ``best`` (its configuration, caches at its image size, the
    launch's seed and precision). A single-label classifier with ``repeats`` > 1 is first retrained
    ``repeats - 1`` more times (``medtune.engine.repeats``, seeds ``recipe.seed + 1`` ...), and seed
    ``recipe.seed`` too when ASHA stopped the winner early; every seed's test probabilities are saved and
    scored (``test_seeds/*``), and the parent run's ``test/<metric>`` is their mean (``repeats.headline``).
    The winner's own test scores are on its trial run.
    """
    system = recipe.load(best.checkpoint_file)
    config, caches, pred_masks = recipe.config, recipe.caches, recipe.pred_masks
    test = test_metrics(system, config, caches=caches, pred_masks=pred_masks)
    arrays = test_predictions(system, config, caches=caches, pred_masks=pred_masks)
    test.update(saliency_ceiling(client, parent_run_id, arrays))
    full = full_budget(retrying(lambda: client.get_run(best.run_id)).data.tags)
    scores = over_seeds(client, parent_run_id, recipe, arrays, repeats=repeats, full=full)
    log_predictions(client, parent_run_id, arrays)
    if system.has_cam:
        log_cam_overlays(client, parent_run_id, arrays)
    shown = headline(test, scores)  # with R > 1 seeds: the mean over them, what the interval is about
    log_winner(client, parent_run_id, best, recipe.metric, shown, test)
    facts = model_facts(recipe.task, config, system, lineage)
    info = log_model(parent_run_id, system, facts, load_cache(caches["test"])["images"])
    if register_as is None:
        return Published(shown, info.model_uri, seeds=scores, facts=facts)
    tags = {
        "val_score": repr(best.val_score),
        "metric": recipe.metric,
        "image_size": str(int(config["data.image_size"])),
        "run_id": best.run_id,
        "selection": SELECTION_DEFAULT,
    }
    tags.update(version_tags or {})
    version, promoted = register(client, parent_run_id, register_as, info, tags, best, recipe.mode)
    return Published(shown, info.model_uri, f"{register_as}/{version}", promoted, scores, facts)


def register(
    client: MlflowClient, run_id: str, name: str, info: ModelInfo, tags: dict[str, str], best: BestTrial, mode: str
) -> tuple[str, bool]:
    """The run's version of ``name`` (registered once, with ``tags``: what it was scored on), promoted if better.

    Idempotent: a publish resumed after the store went away finds the version it registered and the
    promotion it decided (``medtune.tracking.registry``). Returns the version and whether it was promoted.
    """
    version = register_version(client, name, info.model_uri, run_id=run_id, model_id=info.model_id, tags=tags)
    promoted = promote_if_better(client, name, version, best.val_score, mode)
    retrying(lambda: client.set_tag(run_id, "registered_model", f"{name}/{version}"))
    retrying(lambda: client.set_tag(run_id, "promoted_to_champion", str(promoted).lower()))
    return version, promoted


def log_model(
    run_id: str,
    system: BaseTask,
    facts: ModelFacts,
    images: torch.Tensor,
    register_as: str | None = None,
    *,
    name: str = "model",
) -> ModelInfo:
    """Log ``system``'s network on the run as the pyfunc ``name`` (registered as ``register_as`` when given).

    The run is left as it is (RUNNING): no fluent ``mlflow.start_run`` context, which would end it on
    exit. Logging again on the same run (a publish resumed) fills the logged model ``name`` it already
    has instead of adding a second one. The launch registers through ``register`` (once per run), not
    ``register_as``.

    Args:
        facts: what prediction needs (``model_facts``): written as the ``facts`` artifact and the metadata,
            the metadata with the sha256 of the stored code (``model_trust`` checks it before loading).
        images: uint8 [N, 3, S, S] dataset images (the test cache): the first is the MLflow input example
            (MLflow predicts on it once while logging), the first and last trace the export.
    """
    plain = dataclasses.replace(facts, mask_mode="none")  # tracing needs shapes, not the mask
    trace = network_inputs(images[[0, -1]], None, plain)  # a batch of 2: the batch dimension stays dynamic
    program = torch.export.export(system.model.cpu().eval(), (trace,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    model_id = logged_model_id(MlflowClient(), run_id, name)
    with tempfile.TemporaryDirectory() as folder:
        network, facts_file = Path(folder) / "network.pt2", Path(folder) / FACTS_FILE
        torch.export.save(program, network)
        facts_file.write_text(json.dumps(facts.to_json(), indent=1) + "\n")
        return retrying(
            lambda: mlflow.pyfunc.log_model(
                name=name,
                python_model=str(model_trust.CODE_FILE),  # code, not a pickle: loading runs it (model_trust)
                artifacts={"network": str(network), "facts": str(facts_file)},
                signature=signature(facts),
                input_example=images[:1].permute(0, 2, 3, 1).numpy(),
                pip_requirements=PYFUNC_REQUIREMENTS,
                registered_model_name=register_as,
                metadata={"medtune": {**facts.to_json(), "code_sha256": model_trust.code_sha256()}},
                model_id=model_id,
            )
        )


def logged_model_id(client: MlflowClient, run_id: str, name: str) -> str:
    """The id of run ``run_id``'s logged model ``name``: the one it has (a publish resumed), else a new one
    linked to the run as its output (what the UI lists under the run's models)."""
    run = retrying(lambda: client.get_run(run_id))
    query = f"source_run_id = '{run_id}' AND name = '{name}'"
    found = retrying(lambda: client.search_logged_models([run.info.experiment_id], filter_string=query))
    if found:
        return found[0].model_id
    model = retrying(lambda: client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id))
    retrying(lambda: client.log_outputs(run_id, models=[LoggedModelOutput(model.model_id, step=0)]))
    return model.model_id


def champion_summary(client: MlflowClient, name: str) -> str:
    """One line on who holds ``champion`` for ``name``."""
    current = champion(client, name)
    if current is None:
        return f"{name}: no {CHAMPION}"
    return f"{name}@{CHAMPION} = version {current.version} ({current.tags.get('metric', 'score')} {current.tags.get('val_score')})"
