"""Everything the driver does before Ray starts: validate, cache, resolve the segmenter, open MLflow.

Nothing is written to MLflow until the space, the dataset and the segmenter have all been checked,
so bad input leaves no half-made experiment behind.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from medtune.config.options import LaunchOptions
from medtune.config.overrides import apply_overrides, describe
from medtune.config.spaces import SearchSpace, load_config, load_space
from medtune.config.validate import SpaceError
from medtune.data import duplicates
from medtune.data.cache import build_cache
from medtune.data.coco import SPLITS, DataError, Dataset, load_records, resolve_dataset, single_labels
from medtune.data.folds import FoldPlan, plan_folds, pool_cache
from medtune.engine import build
from medtune.engine.recipe import Recipe
from medtune.prepare.segmenter_choice import Segmenter, concat_masks, mask_caches, resolve_segmenter
from medtune.tracking.provenance import code_version, dataset_inputs, describe_experiment, standard_tags
from medtune.tracking.store import LAUNCH_TAG, TrackingError, default_tracking_uri, experiment_id, open_client

USER_ERRORS = (SpaceError, DataError, TrackingError)
MAX_PROBLEM_LINES = 20


@dataclass
class Prepared:
    """The validated inputs of one launch."""

    space: SearchSpace
    dataset: Dataset
    caches: dict[int, dict[str, str]]
    pred_masks: dict[int, dict[str, str]] | None
    segmenter: Segmenter | None
    tracking_uri: str
    experiment: str
    folds: FoldPlan | None = None  # cross-validation: caches and pred_masks also hold "pool"
    # split -> image_ids and, per image, the fold model that drew its mask (-1: the registered model)
    mask_sources: dict[str, dict[str, list[int]]] | None = None

    def recipe(self, options: LaunchOptions) -> Recipe:
        """The launch-wide training recipe: no configuration and no caches yet (a trial, the winner's
        publishing and its retrains each derive theirs with ``dataclasses.replace``)."""
        space = self.space
        return Recipe(
            task=space.task,
            config={},
            caches={},
            pred_masks=None,
            num_classes=self.dataset.num_classes,
            max_epochs=space.budget["max_epochs"],
            metric=space.metric,
            mode=space.mode,
            seed=options.seed,
            precision=options.precision,
        )


def load_and_override(options: LaunchOptions) -> SearchSpace:
    """The space with ``--set``, then ``--num-samples`` / ``--max-epochs`` / ``--repeats``, applied (a new space)."""
    space = load_config(options.config) if options.config else load_space(options.space, smoke=options.smoke)
    space = apply_overrides(space, options.overrides)  # --set, after --smoke
    if options.folds is not None:
        if options.folds == 1 or options.folds < 0:
            raise SpaceError(f"--folds: expected an integer >= 2 (or 0: no cross-validation), got {options.folds}")
        space = dataclasses.replace(space, folds=options.folds)
    if options.outer_folds is not None:
        if options.outer_folds == 1 or options.outer_folds < 0:
            raise SpaceError(
                f"--outer-folds: expected an integer >= 2 (or 0: no nested cross-validation), got {options.outer_folds}"
            )
        space = dataclasses.replace(space, outer_folds=options.outer_folds)
    overrides = {"num_samples": options.num_samples, "max_epochs": options.max_epochs, "repeats": options.repeats}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    for key, value in overrides.items():
        if value < 1:
            raise SpaceError(f"--{key.replace('_', '-')}: expected a positive integer, got {value}")
    grid_size = space.budget["num_samples"]
    if space.search == "grid" and overrides.get("num_samples", grid_size) != grid_size:
        # A grid runs each combination once; more samples would repeat configurations, fewer
        # would leave combinations out without saying which.
        raise SpaceError(
            f"--num-samples: {space.path} is a grid of {grid_size} combinations, each run once; "
            f"got {overrides['num_samples']} (leave --num-samples out)"
        )
    if overrides.get("repeats", 1) > 1 and not build.task_spec(space.task).single_label:
        # The seeds' predictions and their bootstrap are defined for single-label classifiers only.
        raise SpaceError(
            f"--repeats: retraining with more seeds covers single-label classification; {space.path} is a "
            f"'{space.task}' space (leave --repeats out)"
        )
    return dataclasses.replace(space, budget={**space.budget, **overrides})


def check_dataset(dataset: Dataset) -> None:
    """Fast structural checks of every split (no image decoding); one line per problem."""
    from medtune.data.check import check_coco

    lines = []
    for split in SPLITS:
        report = check_coco(dataset.coco_files[split], dataset.images_dirs[split], fast=True)
        lines += [_one_line(f"{dataset.coco_files[split]}: {p.line()}") for p in report.problems]
    if lines:
        more = f" (+{len(lines) - MAX_PROBLEM_LINES} more)" if len(lines) > MAX_PROBLEM_LINES else ""
        details = "\n".join(lines[:MAX_PROBLEM_LINES])
        raise DataError(
            f"dataset {dataset.root} has {len(lines)} problem(s){more}; run python -m medtune.data check for the full report\n{details}"
        )


def _one_line(text: str) -> str:
    """``text`` with line breaks escaped (a file name may hold one): one problem, one line."""
    return text.strip().replace("\r", "\\r").replace("\n", "\\n")


def image_sizes(space: SearchSpace) -> list[int]:
    sizes = space.possible_values("data.image_size")
    if not sizes:
        raise SpaceError(f"{space.path}: key 'data.image_size' must be fixed or a choice (caches are built per size)")
    return sorted({int(s) for s in sizes})


def checked_dataset(options: LaunchOptions, default_data: Path) -> Dataset:
    """``--data`` (or ``default_data``, the embedded synthetic set generated on first use) resolved and
    structurally checked (``check_dataset``)."""
    data = options.data or default_data
    if options.data is None and not (default_data / "train.json").is_file():
        from medtune.data.tools.synth import generate

        print(f"[launch] generating the embedded synthetic dataset in {default_data}")
        generate(default_data)
    dataset = resolve_dataset(data, cache_root=options.cache_dir, seed=options.seed)
    check_dataset(dataset)
    return dataset


def prepare(options: LaunchOptions, *, default_data: Path) -> Prepared:
    """Validate the space and dataset, build caches, resolve the segmenter; writes no MLflow record."""
    space = load_and_override(options)
    dataset = checked_dataset(options, default_data)
    spec = build.task_spec(space.task)
    if spec.model_kind == "classification" and spec.single_label:  # one class per image, or say which not
        for split in SPLITS:
            single_labels(load_records(dataset, split), dataset.coco_files[split])
    folds = plan_checked_folds(dataset, space.folds, options) if space.folds else None  # may refuse: before caches
    tracking_uri = options.tracking_uri or default_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)  # also used by mlflow.pytorch.load_model / log_model
    mlflow.set_registry_uri(tracking_uri)
    segmenter = None
    if build.task_spec(space.task).needs_segmenter:
        segmenter = resolve_segmenter(open_client(tracking_uri), dataset, options)
    sizes = image_sizes(space)
    caches = {size: {s: str(build_cache(dataset, s, size, options.cache_dir)) for s in SPLITS} for size in sizes}
    pred_masks, sources = mask_caches(segmenter, dataset, sizes, options.cache_dir) if segmenter else (None, None)
    if folds:
        for size in sizes:
            caches[size]["pool"] = str(pool_cache(dataset, size, options.cache_dir))
            if pred_masks:
                pred_masks[size]["pool"] = str(concat_masks(pred_masks[size]))
    experiment = options.experiment or space.name
    return Prepared(space, dataset, caches, pred_masks, segmenter, tracking_uri, experiment, folds, sources)


def plan_checked_folds(dataset: Dataset, folds: int, options: LaunchOptions) -> FoldPlan:
    """The launch's fold plan, printed; raises ``DataError`` (one line) when kept-whole groups make the
    folds something other than K-fold cross-validation, unless ``options.accept_unbalanced_folds``."""
    near = duplicates.Setting(accept_large=options.accept_groups)  # split's default setting; --accept-groups
    plan = plan_folds(dataset, folds, seed=options.seed, cache_root=options.cache_dir, near=near)
    print(f"[launch] {plan.describe()}")
    check_balance(plan, accept=options.accept_unbalanced_folds)
    return plan


def check_balance(plan: FoldPlan, *, accept: bool) -> None:
    """Refuse (``DataError``, one line) an unbalanced plan unless ``accept``; an accepted one is a warning.

    A fold holding out far more than its share trains its model on far less, and the fold mean that
    the search optimises (and the paired tests compare) rests on folds that are not alike.
    """
    if not plan.unbalanced:
        return
    if not accept:
        raise DataError(
            f"{plan.unbalanced}; this is not {plan.folds}-fold cross-validation: regroup the data "
            "(python -m medtune.data check lists the groups) or pass --accept-unbalanced-folds"
        )
    print(f"[launch] warning: {plan.unbalanced} (accepted: --accept-unbalanced-folds)", file=sys.stderr)


def start_parent_run(
    client: MlflowClient,
    prepared: Prepared,
    options: LaunchOptions,
    ray_path: str,
    name: str,
    *,
    stage: dict[str, str] | None = None,
) -> str:
    """Create the experiment (driver only) and the launch's parent run ``launch-<name>`` with its provenance;
    ``ray_path`` is Ray's experiment folder (a local folder or a bucket URI), what ``--resume`` restores.
    ``stage``: the tags of a nested launch's stage (``trainables.nested``; its parent run among them): the
    run is then that child run, named ``name``, and not a launch of its own.

    Besides medtune's own tags, the run carries MLflow's (user, source, git commit), the space file's
    header comment as its description (and the experiment's, unless it has one) and the dataset
    splits it uses as inputs, so the MLflow UI and ``MlflowClient`` show them as for any MLflow run.
    """
    exp_id = experiment_id(client, prepared.experiment, create=True)
    space, dataset = prepared.space, prepared.dataset
    describe_experiment(client, exp_id, space.description)
    tags = {
        **standard_tags(),
        **({MLFLOW_RUN_NOTE: space.description} if space.description else {}),
        **(stage or {LAUNCH_TAG: "true"}),
        "space": space.name,
        "task": space.task,
        "dataset": str(dataset.root),
        "dataset_fingerprint": dataset.fingerprint,
        "code_version": code_version(),
        "ray_path": ray_path,
        "smoke": str(options.smoke).lower(),
        "config": str(options.config is not None).lower(),  # one configuration, no search (report.load.launch_kind)
        "python": platform.python_version(),
    }
    if prepared.segmenter:
        tags.update(
            segmenter_uri=prepared.segmenter.uri,
            segmenter_version=f"{prepared.segmenter.name}/{prepared.segmenter.version}",
            segmenter_foreign=str(prepared.segmenter.foreign).lower(),
            segmenter_masks="out-of-fold" if prepared.segmenter.out_of_fold else "one model",
        )
    if prepared.folds:
        tags["cv_folds_digest"] = prepared.folds.digest
        tags["cv_folds_unbalanced"] = str(bool(prepared.folds.unbalanced)).lower()  # true: accepted by the user
    run = client.create_run(exp_id, run_name=name if stage else f"launch-{name}", tags=tags)
    client.log_inputs(run.info.run_id, datasets=dataset_inputs(dataset, prepared.folds))
    params = {
        "metric": space.metric,
        "mode": space.mode,
        "seed": options.seed,
        **{f"budget.{k}": v for k, v in space.budget.items()},
        **({"cv_folds": prepared.folds.folds} if prepared.folds else {}),
        **({"cv_fold_sizes": "/".join(map(str, prepared.folds.sizes()))} if prepared.folds else {}),
        **({"cv_accept_groups": options.accept_groups} if prepared.folds else {}),
        **({"overrides": describe(options.overrides)} if options.overrides else {}),
    }
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    client.log_text(run.info.run_id, space.path.read_text(), "search_space.yaml")
    client.log_dict(run.info.run_id, _versions(), "versions.json")
    if prepared.folds:
        client.log_dict(run.info.run_id, prepared.folds.as_json(), "folds.json")
    if prepared.mask_sources:  # which model drew each image's mask (fold index; -1: the registered model)
        client.log_dict(run.info.run_id, _sources_json(prepared), "mask_sources.json")
    params = [
        {"name": p.name, "kind": p.kind, "values": list(p.values), "when": {k: list(v) for k, v in p.when.items()}}
        for p in space.params
    ]
    resolved = {
        "task": space.task,
        "metric": space.metric,
        "mode": space.mode,
        "budget": space.budget,
        "fixed": space.fixed,
        "params": params,
        "overrides": list(options.overrides),  # launch.py --set, already applied above
    }
    client.log_text(run.info.run_id, json.dumps(resolved, indent=2), "resolved_space.json")
    return run.info.run_id


def _sources_json(prepared: Prepared) -> dict:
    splits = prepared.mask_sources or {}  # the image ids were read once, with the masks
    return {"segmenter": prepared.segmenter.uri if prepared.segmenter else None, "ensemble": -1, "splits": splits}


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    names = [
        "torch",
        "torchvision",
        "ray",
        "pytorch-lightning",
        "optuna",
        "mlflow",
        "torchmetrics",
        "grad-cam",
        "pycocotools",
    ]
    return {name: version(name) for name in names}
