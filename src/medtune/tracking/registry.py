"""The MLflow Model Registry side of a launch: registered-model names and the ``champion`` alias.

Segmenters are registered as ``seg-<dataset>-<fingerprint>``, classifiers as
``<space>-<dataset>-<fingerprint>``; the alias ``champion`` points at the best comparable version,
moved only by ``promote_if_better`` (a compare-and-set).
"""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from medtune.tracking.store import _held, lock_path, retrying, sqlite_file, transient

CHAMPION = "champion"
PROMOTION_ATTEMPTS = 3  # decisions per promotion while the alias keeps moving underneath (stores without a lock)


def segmenter_name(dataset_name: str, fingerprint: str) -> str:
    """Registered-model name of the segmenters trained on one dataset (its splits' fingerprint)."""
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in dataset_name)
    return f"seg-{safe}-{fingerprint[:8]}"


def champion(client: MlflowClient, name: str) -> Any | None:
    """The model version holding the ``champion`` alias, or None (a locked store is not "no champion")."""
    try:
        return retrying(lambda: client.get_model_version_by_alias(name, CHAMPION))
    except MlflowException as err:
        if transient(err):
            raise
        return None


# What two segmenter versions must share for their validation scores to be comparable.
# ``selection``: what the score was measured on (``val split``, or ``K-fold cross-validation``: a fold mean).
COMPARABLE_TAGS = ("metric", "mode", "image_size", "dataset_fingerprint", "selection")
SELECTION_DEFAULT = "val split"  # versions registered before ``selection`` was recorded
PROMOTION_TAG = "promotion"  # on each new version: why it was or was not promoted


def incomparable(new: dict[str, str], current: dict[str, str]) -> str:
    """Why two versions' scores cannot be compared ("" when they can): metric, mode, size or split differ.

    A champion registered before versions carried ``mode`` is taken to share the new version's mode
    (its metric name still has to match); one without ``selection`` was selected on its val split.
    """
    new = {"selection": SELECTION_DEFAULT, **new}
    current = {"mode": new.get("mode", ""), "selection": SELECTION_DEFAULT, **current}
    diffs = [
        f"{key} {current.get(key, '?')} vs {new.get(key, '?')}"
        for key in COMPARABLE_TAGS
        if new.get(key) != current.get(key)
    ]
    return "; ".join(diffs)


def promote_if_better(client: MlflowClient, name: str, version: str, score: float, mode: str) -> bool:
    """Move ``champion`` to ``version`` if its validation ``score`` beats the current champion's.

    Only like is compared with like: the two versions must share the metric, its mode, the image size and
    the dataset fingerprint (``COMPARABLE_TAGS``, read from the versions' tags). Otherwise the new version
    stays registered but is not promoted. Either way the reason is written to the new version's
    ``promotion`` tag, and ``promotion_reason`` tells it to the caller.

    Deciding and moving is a compare-and-set per registered model, so that of two launches finishing
    together the worse cannot end as champion. On a sqlite store both run under a ``FileLock`` beside the
    database (``_promotion_lock``): the second launch compares against the first one's outcome. Other
    stores offer no lock: the alias is read back after the move, and if another launch moved it meanwhile
    the decision is made again against the new champion. Residual race there: a launch that moves the
    alias between this one's decision and its move is overwritten without either noticing.
    """
    retrying(lambda: client.set_model_version_tag(name, version, "mode", mode))
    with _promotion_lock(client, name):
        for _ in range(PROMOTION_ATTEMPTS):
            promoted, reason = _decide(client, name, version, score, mode)
            if not promoted:
                break
            retrying(lambda: client.set_registered_model_alias(name, CHAMPION, version))
            holder = champion(client, name)
            if holder is not None and str(holder.version) == str(version):
                break
        else:
            promoted, reason = False, f"champion moved by other launches {PROMOTION_ATTEMPTS} times; not promoted"
        retrying(lambda: client.set_model_version_tag(name, version, PROMOTION_TAG, reason))
    return promoted


def _promotion_lock(client: MlflowClient, name: str) -> Any:
    """A lock per registered model of a sqlite registry (``store.lock_path``); no lock (a null context) elsewhere."""
    path = sqlite_file(client._registry_uri)  # MlflowClient exposes the registry URI only as this attribute
    if path is None:
        return nullcontext()
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return _held(lock_path(path, f".{digest}"))


def promotion_reason(client: MlflowClient, name: str, version: str) -> str:
    """The reason ``promote_if_better`` recorded for ``version``."""
    return client.get_model_version(name, version).tags.get(PROMOTION_TAG, "")


def _decide(client: MlflowClient, name: str, version: str, score: float, mode: str) -> tuple[bool, str]:
    current = champion(client, name)
    if current is None:
        return True, "first champion"
    new_tags = client.get_model_version(name, version).tags
    if differs := incomparable(new_tags, current.tags):
        return False, f"not comparable with champion v{current.version} ({differs}); champion kept"
    best = float(current.tags.get("val_score", "nan"))
    if best != best:  # the champion has no valid score: any scored version replaces it
        return True, f"champion v{current.version} had no valid score"
    beaten = score > best if mode == "max" else score < best
    verdict = "better than" if beaten else "not better than"
    kept = "" if beaten else "; champion kept"
    return beaten, f"{current.tags.get('metric')} {score:.4f} {verdict} champion v{current.version} ({best:.4f}){kept}"
