"""Which segmenter a masked task uses, and its masks of every image: resolved and computed once per launch.

The champion of the dataset (or ``--segmenter``), refused when trained on another dataset's split
unless ``--allow-foreign-segmenter``; its masks cached per segmenter weights and size, out-of-fold
for a cross-validated segmenter (``medtune.engine.segmenter_masks``). A segmenter (or fold model) whose stored
code is not the installed medtune's is refused when it is loaded, unless ``--trust-model-code``
(``medtune.serving.trust``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from medtune.config.options import LaunchOptions
from medtune.data.cache import build_cache, cache_path
from medtune.data.coco import SPLITS, Dataset, load_records
from medtune.tracking.registry import segmenter_name
from medtune.tracking.store import TrackingError


@dataclass
class Segmenter:
    """The segmenter a masked task uses: its model URI, registry version and what identifies its weights."""

    uri: str
    name: str
    version: str
    image_size: int
    run_id: str  # the run that logged the model: a random id, new for every model ever logged
    source: str  # where its artifacts are
    foreign: bool = False  # trained on another dataset's split (--allow-foreign-segmenter)
    cv_folds: int = 0  # a cross-validated segmenter: its fold models give out-of-fold masks
    trust_code: bool = False  # load it even if its stored code is not this medtune's (--trust-model-code)

    @property
    def out_of_fold(self) -> bool:
        """Whether train/val masks come from the fold model that did not train on each image."""
        return self.cv_folds >= 2

    @property
    def cache_key(self) -> str:
        """The mask cache folder: what determines the masks, not only the name and version.

        A reset store (or another --tracking-uri) numbers its first segmenter v1 again; its run id
        and source differ, so its masks are computed afresh instead of reusing an old v1's.
        """
        oof = "|out-of-fold" if self.out_of_fold else ""
        digest = hashlib.sha256(f"{self.run_id}|{self.source}|{self.image_size}{oof}".encode()).hexdigest()
        return f"{self.name}-v{self.version}-{digest[:12]}"


def resolve_segmenter(client: MlflowClient, dataset: Dataset, options: LaunchOptions) -> Segmenter:
    """The champion, or ``--segmenter``; either must have been trained on this dataset's splits."""
    from medtune.engine.segmenter_masks import resolve_segmenter

    name = segmenter_name(dataset.name, dataset.fingerprint)
    data_arg = f" --data {options.data}" if options.data else ""
    uri, version = resolve_segmenter(
        client, name=name, uri=options.segmenter, command=f"python launch.py --space segmentation{data_arg}"
    )
    size = version.tags.get("image_size")
    if size is None:
        raise TrackingError(
            f"segmenter {uri} (version {version.version}) has no image_size tag; was it logged by launch.py?"
        )
    foreign = version.tags.get("dataset_fingerprint") != dataset.fingerprint
    if foreign and not options.allow_foreign_segmenter:
        raise TrackingError(
            f"segmenter {uri} was trained on dataset {version.tags.get('dataset', '?')} (fingerprint "
            f"{version.tags.get('dataset_fingerprint', 'none')[:8]}), not on this one ({dataset.fingerprint[:8]}): its "
            "training images may be this dataset's test images; pass --allow-foreign-segmenter to use it anyway"
        )
    if foreign:
        print(f"[launch] warning: {uri} was trained on another dataset's split (--allow-foreign-segmenter)")
    cv_folds = int(version.tags.get("cv_folds", "0") or 0)
    return Segmenter(
        uri,
        version.name,
        str(version.version),
        int(size),
        version.run_id or "",
        version.source,
        foreign,
        cv_folds,
        options.trust_model_code,
    )


def mask_caches(
    seg: Segmenter, dataset: Dataset, sizes: list[int], cache_root: Path
) -> tuple[dict[int, dict[str, str]], dict[str, dict[str, list[int]]]]:
    """Mask caches per size and split, and per split the source of each image's mask.

    Out-of-fold for a cross-validated segmenter (see ``medtune.engine.segmenter_masks``); models are loaded
    only when a cache is missing.
    """
    from medtune.engine.segmenter_masks import ENSEMBLE, build_mask_cache, fold_models, load_segmenter, mask_sources

    folds = fold_models(seg.run_id) if seg.out_of_fold else []
    loaded: dict[int, object] = {}

    def model(source: int):
        if source not in loaded:
            uri = seg.uri if source == ENSEMBLE else folds[source]["model_uri"]
            if not loaded:
                how = f", out-of-fold for train/val from its {len(folds)} fold models" if folds else ""
                print(f"[launch] computing masks of {seg.uri} (version {seg.version}) once for all trials{how}")
            loaded[source] = load_segmenter(uri, trust_code=seg.trust_code)
        return loaded[source]

    out: dict[int, dict[str, str]] = {}
    sources: dict[str, dict[str, list[int]]] = {}  # split -> image ids and, per image, its mask's source
    for split in SPLITS:
        ids = load_records(dataset, split).image_ids
        drawn = mask_sources(ids, folds) if split != "test" else [ENSEMBLE] * len(ids)
        sources[split] = {"image_ids": ids, "sources": drawn}
    for size in sizes:
        out[size] = {}
        for split in SPLITS:
            seg_images = build_cache(dataset, split, seg.image_size, cache_root)
            target = cache_root / "masks" / seg.cache_key / cache_path(dataset, split, size, cache_root).name
            out[size][split] = str(
                build_mask_cache(model, seg_images, target, out_size=size, sources=sources[split]["sources"])
            )
    return out, sources


def concat_masks(split_masks: dict[str, str]) -> Path:
    """The pooled train+val mask cache (rows in ``FoldPlan.pool_ids`` order), for cross-validated trials."""
    from medtune.data.folds import concat_caches, pool_path

    return concat_caches([split_masks["train"], split_masks["val"]], pool_path(split_masks))
