"""The search's winner, after the search: tested (alone, or as the ensemble of its fold models), logged,
registered and promoted if better, and told on the terminal. Plain MLflow and Lightning, no Ray."""

from __future__ import annotations

import math

from mlflow.tracking import MlflowClient

from medtune.crossval import FoldRecipe
from medtune.options import LaunchOptions
from medtune.prepare import Prepared
from medtune.publish import BestTrial, Lineage, Published, champion_summary, publish_best, registered_name
from medtune.publish_cv import publish_folds
from medtune.serving import SegmenterRef
from medtune.tracking import promotion_reason


def publish_winner(
    client: MlflowClient, prepared: Prepared, options: LaunchOptions, parent_run_id: str, best: BestTrial
) -> None:
    """Publish ``best`` on the launch's parent run and the registry, end the run FINISHED, print the result."""
    space, size_caches = prepared.space, prepared.caches
    size = int(best.config["data.image_size"])
    dataset, seg = prepared.dataset, prepared.segmenter
    name = registered_name(space.name, space.task, dataset.name, dataset.fingerprint)  # every task's winner
    version_tags = {"dataset": str(dataset.root), "dataset_fingerprint": dataset.fingerprint}
    if seg:  # the segmenter whose masks it was trained on (masked tasks)
        version_tags.update(segmenter_version=f"{seg.name}/{seg.version}", segmenter_foreign=str(seg.foreign).lower())
    lineage = Lineage(
        classes=tuple(dataset.categories),
        segmenter=SegmenterRef(seg.name, seg.version, seg.image_size) if seg else None,
        dataset_fingerprint=dataset.fingerprint,
    )
    if prepared.folds:
        recipe = FoldRecipe(
            task=space.task,
            config=best.config,
            caches=size_caches[size],
            pred_masks=(prepared.pred_masks or {}).get(size),
            num_classes=prepared.dataset.num_classes,
            epochs=space.budget["max_epochs"],
            plan=prepared.folds,
            seed=options.seed,
            precision=options.precision,
        )
        published = publish_folds(
            client,
            parent_run_id=parent_run_id,
            recipe=recipe,
            best=best,
            metric=space.metric,
            mode=space.mode,
            register_as=name,
            version_tags=version_tags,
            lineage=lineage,
        )
    else:
        published = _publish(client, prepared, options, parent_run_id, best, name, version_tags, lineage)
    client.set_terminated(parent_run_id, "FINISHED")
    _print_result(client, prepared, best, published, name)


def _publish(
    client: MlflowClient,
    prepared: Prepared,
    options: LaunchOptions,
    parent_run_id: str,
    best: BestTrial,
    name: str | None,
    version_tags: dict[str, str],
    lineage: Lineage,
) -> Published:
    """The winner of a search without folds: tested, retrained with more seeds, logged (registered)."""
    space, size = prepared.space, int(best.config["data.image_size"])
    return publish_best(
        client,
        parent_run_id=parent_run_id,
        task=space.task,
        best=best,
        caches=prepared.caches[size],
        pred_masks=(prepared.pred_masks or {}).get(size),
        num_classes=prepared.dataset.num_classes,
        epochs=space.budget["max_epochs"],
        metric=space.metric,
        mode=space.mode,
        register_as=name,
        version_tags=version_tags,
        lineage=lineage,
        seed=options.seed,
        repeats=space.budget["repeats"],
        precision=options.precision,
    )


def _print_result(
    client: MlflowClient, prepared: Prepared, best: BestTrial, published: Published, name: str | None
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
    print("test split: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(published.test.items())))
    for metric, score in (published.seeds or {}).items():
        print(f"test {metric} {score}")
    if name:
        reason = promotion_reason(client, name, published.registered.rsplit("/", 1)[1])
        verb = "promoted to champion" if published.promoted else "registered, not promoted"
        print(f"model {published.registered} {verb} ({reason}); {champion_summary(client, name)}")
    print(
        f"see every trial: mlflow ui --backend-store-uri {prepared.tracking_uri}  (experiment '{prepared.experiment}')"
    )
