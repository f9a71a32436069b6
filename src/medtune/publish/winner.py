"""The search's winner, after the search: tested (alone, or as the ensemble of its fold models), logged,
registered and promoted if better, described by its model card, and told on the terminal. Plain MLflow
and Lightning, no Ray.

The registry holds portable facts only: versions and registered models are tagged with the dataset's
name and fingerprint (never a local path, which means nothing on another machine). The parent run
carries the winning configuration as params ``best.<key>``, beside the model logged from it.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

from mlflow.entities import Param, Run
from mlflow.tracking import MlflowClient

from medtune.config.options import LaunchOptions
from medtune.config.spaces import Param as SpaceParam
from medtune.data import dataset_duplicates, duplicates
from medtune.data.check import check_coco
from medtune.data.coco import SPLITS, Dataset, load_records
from medtune.data.folds import FoldPlan
from medtune.engine.build import build_datamodule
from medtune.engine.recipe import Recipe
from medtune.prepare.inputs import Prepared
from medtune.prepare.segmenter_choice import Segmenter
from medtune.publish import model_card
from medtune.publish.folds import publish_folds
from medtune.publish.single import BestTrial, Lineage, Published, champion_summary, publish_best, registered_name
from medtune.serving.model import SegmenterRef
from medtune.tracking.leaderboard import counts, leaderboard
from medtune.tracking.registry import promotion_reason
from medtune.tracking.store import retrying

PARAM_LIMIT = 6000  # MLflow's longest param value (what the trials' runs log too)


def publish_winner(
    client: MlflowClient, prepared: Prepared, options: LaunchOptions, parent_run_id: str, best: BestTrial
) -> None:
    """Publish ``best`` on the launch's parent run and the registry, end the run FINISHED, print the result.

    The run stays RUNNING until everything is published, and every write is retried (``tracking.store.retrying``):
    a store that goes away midway leaves a launch that ``--resume`` publishes again, reusing the model logged on
    the run, its registered version and its promotion (``publish.single.register``).
    """
    space = prepared.space
    dataset, seg = prepared.dataset, prepared.segmenter
    name = registered_name(space.name, space.task, dataset.name, dataset.fingerprint) if options.register else None
    version_tags = portable_tags(dataset)
    if seg:  # the segmenter whose masks it was trained on (masked tasks)
        version_tags.update(segmenter_version=f"{seg.name}/{seg.version}", segmenter_foreign=str(seg.foreign).lower())
    lineage = Lineage(
        classes=tuple(dataset.categories),
        segmenter=SegmenterRef(seg.name, seg.version, seg.image_size) if seg else None,
        dataset_fingerprint=dataset.fingerprint,
    )
    recipe = winner_recipe(prepared, options, best)
    if prepared.folds:
        published = publish_folds(
            client,
            parent_run_id=parent_run_id,
            recipe=recipe,
            plan=prepared.folds,
            best=best,
            register_as=name,
            version_tags=version_tags,
            lineage=lineage,
        )
    else:
        published = publish_best(
            client,
            parent_run_id=parent_run_id,
            recipe=recipe,
            best=best,
            register_as=name,
            version_tags=version_tags,
            lineage=lineage,
            repeats=space.budget["repeats"],
        )
    log_best_params(client, parent_run_id, best.config)
    if published.registered:
        card = card_input(client, prepared, options, parent_run_id, best, published)
        model_card.log_card(client, card, {**portable_tags(dataset), "task": space.task})
    retrying(lambda: client.set_terminated(parent_run_id, "FINISHED"))  # last: until here --resume can go on
    _print_result(client, prepared, best, published, name, parent_run_id)


def winner_recipe(prepared: Prepared, options: LaunchOptions, best: BestTrial) -> Recipe:
    """How the search trained ``best``: the trials' recipe (``trainables.driver``) with its configuration and
    the caches at its image size (``pool`` and ``test`` under cross-validation)."""
    size = int(best.config["data.image_size"])
    caches, pred_masks = prepared.caches[size], (prepared.pred_masks or {}).get(size)
    return replace(prepared.recipe(options), config=best.config, caches=caches, pred_masks=pred_masks)


def _print_result(
    client: MlflowClient, prepared: Prepared, best: BestTrial, published: Published, name: str | None, run_id: str
) -> None:
    space = prepared.space
    if prepared.folds:
        k, sd = prepared.folds.folds, (best.metrics or {}).get(f"cv/sd/{space.metric}", math.nan)
        print(
            f"best trial: {best.run_id} {space.metric}={best.val_score:.4f} +/- {sd:.4f} "
            f"(mean +/- sd over {k} folds of {len(prepared.folds.pool_ids)} train+val images)"
        )
        print(f"test split: the {k} fold models' ensemble; each fold model alone under test_fold<k>/*")
    else:
        print(f"best trial: {best.run_id} {space.metric}={best.val_score:.4f}")
    seeds = max((score.seeds for score in (published.seeds or {}).values()), default=1)
    over = f" ({', '.join(published.seeds)}: mean over {seeds} seeds)" if seeds > 1 else ""
    print(f"test split{over}: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(published.test.items())))
    for metric, score in (published.seeds or {}).items():
        print(f"test {metric} {score}")
    if name:
        reason = promotion_reason(client, name, published.registered.rsplit("/", 1)[1])
        verb = "promoted to champion" if published.promoted else "registered, not promoted"
        print(f"model {published.registered} {verb} ({reason}); {champion_summary(client, name)}")
        print(f"model card: the description of {published.registered}, and {model_card.CARD_FILE} of run {run_id}")
    print(
        f"see every trial: mlflow ui --backend-store-uri {prepared.tracking_uri}  (experiment '{prepared.experiment}')"
    )


def portable_tags(dataset: Dataset) -> dict[str, str]:
    """Registry tags that mean the same on every machine: the dataset's name and fingerprint."""
    return {"dataset": dataset.name, "dataset_fingerprint": dataset.fingerprint}


def log_best_params(client: MlflowClient, run_id: str, config: dict) -> None:
    """The winning configuration on the parent run as params ``best.<key>``, written as its trial's run has them."""
    params = [Param(f"best.{key}", str(value)[:PARAM_LIMIT]) for key, value in sorted(config.items())]
    for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        retrying(lambda chunk=params[start : start + 100]: client.log_batch(run_id, params=chunk))


def card_input(
    client: MlflowClient,
    prepared: Prepared,
    options: LaunchOptions,
    parent_run_id: str,
    best: BestTrial,
    published: Published,
) -> model_card.CardInput:
    """The facts of the registered winner's model card, from the launch and what it logged on its run."""
    run = retrying(lambda: client.get_run(parent_run_id))
    seg, folds = prepared.segmenter, prepared.folds
    lineage = model_card.LineageFacts(
        run_id=parent_run_id,
        experiment=prepared.experiment,
        code_version=run.data.tags.get("code_version", "?"),
        fold_models=folds.folds if folds else 0,
        segmenter=f"{seg.name}/{seg.version}" if seg else "",
        segmenter_masks=("out-of-fold" if seg.out_of_fold else "one model") if seg else "",
        segmenter_foreign=bool(seg and seg.foreign),
        segmenter_scores=segmenter_scores(client, seg) if seg else "",
    )
    name, version = (published.registered or "/").rsplit("/", 1)
    return model_card.CardInput(
        name=name,
        version=version,
        data=data_facts(prepared.dataset, folds),
        preprocessing=published.facts.to_json() if published.facts else {},
        search=search_facts(client, prepared, options, run, best),
        lineage=lineage,
        metrics=dict(run.data.metrics),
        repeats=int(run.data.params.get("repeats", "1")),
        config=dict(best.config),
        augment=float(build_datamodule(best.config, caches={}).augment),
        nested=run.data.tags.get("nested_estimate", ""),
    )


def data_facts(dataset: Dataset, folds: FoldPlan | None) -> model_card.DataFacts:
    """Split sizes, class counts and what the full ``check`` finds (decoding, sizes, exact and near duplicates).

    The launch checked only the structure before training (``prepare.check_dataset``, which refuses
    any problem); the card reports the rest, which takes seconds (BUSI's 780 images: about 7 s).
    """
    images, classes, lesion_free, problems = {}, {}, {}, {}
    for split in SPLITS:
        records = load_records(dataset, split)
        tally = Counter(k for labels in records.labels for k in labels)
        images[split] = len(records.image_ids)
        classes[split] = {name: tally[k] for k, name in enumerate(dataset.categories)}
        lesion_free[split] = sum(not segmentations for segmentations in records.segmentations)
        problems[split] = check_coco(dataset.coco_files[split], dataset.images_dirs[split]).counts()
    groups = dataset_duplicates.split_groups(dataset.coco_files, dataset.images_dirs, duplicates.Setting())
    return model_card.DataFacts(
        name=dataset.name,
        fingerprint=dataset.fingerprint,
        classes=tuple(dataset.categories),
        images=images,
        class_counts=classes,
        lesion_free=lesion_free,
        problems=problems,
        near_groups=len(groups),
        straddling=len(dataset_duplicates.straddling(groups)),
        folds=folds.describe() if folds else "",
    )


def search_facts(
    client: MlflowClient, prepared: Prepared, options: LaunchOptions, parent: Run, best: BestTrial
) -> model_card.SearchFacts:
    """The space, budget and trials of the launch (``parent``), and its winner, as the leaderboard has them."""
    space = prepared.space
    rows = leaderboard(client, parent.info.experiment_id, parent.info.run_id, space.metric, space.mode)
    row = next((r for r in rows if r.run_id == best.run_id), None)
    searched = [p.name for p in space.params if p.name in best.config]
    return model_card.SearchFacts(
        space=space.name,
        task=space.task,
        metric=space.metric,
        mode=space.mode,
        search=space.search,
        params=tuple(param_line(p) for p in space.params),
        fixed=dict(space.fixed),
        budget=dict(space.budget),
        seed=options.seed,
        smoke=options.smoke,
        overrides=tuple(options.overrides),
        trials=dict(counts(rows)),
        winner_run=best.run_id,
        winner_name=row.name if row else best.run_id,
        winner_config={key: best.config[key] for key in searched},
        winner_val=best.val_score,
        winner_epochs=row.epochs if row else 0,
        # the epoch winner_val came from: the trial run's best/epoch (trainables.mlflow_trials), 0 if not logged
        winner_epoch=int(retrying(lambda: client.get_run(best.run_id)).data.metrics.get("best/epoch", 0)),
    )


def param_line(param: SpaceParam) -> str:
    """One searched key in words: ``train.lr: loguniform 0.0003 to 0.01``, with its condition if any."""
    if param.kind == "choice":
        values = "one of " + ", ".join(str(v) for v in param.values)
    else:
        values = f"{param.kind} {param.values[0]} to {param.values[-1]}"
    when = "; ".join(f"{key} in {', '.join(str(v) for v in allowed)}" for key, allowed in param.when.items())
    return f"`{param.name}`: {values}" + (f" (when {when})" if when else "")


def segmenter_scores(client: MlflowClient, seg: Segmenter) -> str:
    """What the segmenter's own launch logged: its test score and, cross-validated, its fold mean +/- sd."""
    version = retrying(lambda: client.get_model_version(seg.name, seg.version))
    if not version.run_id:
        return "its launch's scores are not in this store"
    metrics = retrying(lambda: client.get_run(version.run_id)).data.metrics
    metric = version.tags.get("metric", "val/iou")
    name = metric.split("/", 1)[-1]
    words = f"its launch (run `{version.run_id}`) logged test {name} {_number(metrics.get(f'test/{name}'))}"
    if f"cv/mean/{metric}" in metrics:
        words += (
            f", {metric} {_number(metrics[f'cv/mean/{metric}'])} +/- {_number(metrics.get(f'cv/sd/{metric}'))} "
            f"(mean +/- sd over {seg.cv_folds} folds)"
        )
    return words


def _number(value: float | None) -> str:
    return "not logged" if value is None or not math.isfinite(value) else f"{value:.3f}"
