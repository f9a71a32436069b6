"""The MLflow Model Registry side of a launch: registered-model names and the ``champion`` alias.

Segmenters are registered as ``seg-<dataset>-<fingerprint>``, classifiers as
``<space>-<dataset>-<fingerprint>``; the alias ``champion`` points at the best comparable version,
moved only by ``promote_if_better`` (a compare-and-set on any store: promotions queue by version number).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from medtune.tracking.store import retrying, transient

CHAMPION = "champion"
PROMOTION_ATTEMPTS = 3  # decisions per promotion while the alias keeps moving (a writer outside the queue)
PENDING = "pending"  # a new version's ``promotion`` tag until its promotion is decided (``register_version``)
PROMOTED_TAG = "promoted"  # on each decided version: whether its promotion moved the alias ("true"/"false")
STALE_S = 600.0  # a pending version older than this, or waited on this long, belongs to a launch that died
POLL_S = 1.0  # how often a queued promotion re-reads the versions before it


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


def register_version(
    client: MlflowClient, name: str, source: str, *, run_id: str, model_id: str | None, tags: dict[str, str]
) -> str:
    """The version of ``name`` registered from run ``run_id``: created once, found again by the run id.

    Idempotent: a publish resumed after the store went away reuses its version instead of registering a
    second one. The version is created with its tags in one write, ``promotion=pending`` among them: from
    that moment later versions queue behind it (``promote_if_better``).
    """
    found = retrying(lambda: client.search_model_versions(f"name='{name}' and run_id='{run_id}'"))
    if found:
        return str(min(int(v.version) for v in found))
    try:
        retrying(lambda: client.create_registered_model(name))
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    all_tags = {**tags, PROMOTION_TAG: PENDING}
    version = retrying(lambda: client.create_model_version(name, source, run_id, all_tags, model_id=model_id))
    return str(version.version)


def promote_if_better(client: MlflowClient, name: str, version: str, score: float, mode: str) -> bool:
    """Move ``champion`` to ``version`` if its validation ``score`` beats the current champion's.

    Only like is compared with like: the two versions must share the metric, its mode, the image size and
    the dataset fingerprint (``COMPARABLE_TAGS``, read from the versions' tags). Otherwise the new version
    stays registered but is not promoted. Either way the reason is written to the new version's
    ``promotion`` tag, and ``promotion_reason`` tells it to the caller. A version already decided (a
    publish resumed after the store went away) is not decided again.

    Deciding and moving is a compare-and-set per registered model on any store (sqlite, a tracking
    server, postgres), so that of two launches finishing together the worse cannot end as champion:
    promotions queue by version number, which the store assigns. A version created by
    ``register_version`` carries ``promotion=pending``; its promotion waits until no lower version is
    pending (``_wait_for_turn``), then decides against the champion of that moment, moves the alias and
    writes its reason, which lets the next one go. A pending version of a launch that died is waited on
    at most ``STALE_S``. The alias is read back after the move: a writer outside the queue (a version
    without the tag, an older medtune) that moved it meanwhile makes the decision be taken again.
    """
    tags = retrying(lambda: client.get_model_version(name, version)).tags
    if tags.get(PROMOTION_TAG, PENDING) != PENDING:
        return tags.get(PROMOTED_TAG) == "true" or _held_by(client, name, version)
    retrying(lambda: client.set_model_version_tag(name, version, "mode", mode))
    _wait_for_turn(client, name, version)
    for _ in range(PROMOTION_ATTEMPTS):
        promoted, reason = _decide(client, name, version, score, mode)
        if not promoted:
            break
        retrying(lambda: client.set_registered_model_alias(name, CHAMPION, version))
        if _held_by(client, name, version):
            break
    else:
        promoted, reason = False, f"champion moved by other launches {PROMOTION_ATTEMPTS} times; not promoted"
    retrying(lambda: client.set_model_version_tag(name, version, PROMOTED_TAG, str(promoted).lower()))
    retrying(lambda: client.set_model_version_tag(name, version, PROMOTION_TAG, reason))  # last: lets the next go
    return promoted


def _held_by(client: MlflowClient, name: str, version: str) -> bool:
    holder = champion(client, name)
    return holder is not None and str(holder.version) == str(version)


def _wait_for_turn(client: MlflowClient, name: str, version: str) -> None:
    """Return once no version of ``name`` below ``version`` is pending (its promotion undecided).

    A pending version created more than ``STALE_S`` before this one, or still pending after waiting
    ``STALE_S``, belongs to a launch that died before promoting (its ``--resume`` decides it later).
    """
    own = retrying(lambda: client.get_model_version(name, version))
    query = f"name='{name}' and tag.{PROMOTION_TAG}='{PENDING}'"
    started, said = time.monotonic(), False
    while True:
        ahead = sorted(
            int(v.version)
            for v in retrying(lambda: client.search_model_versions(query))
            if int(v.version) < int(version) and own.creation_timestamp - v.creation_timestamp < STALE_S * 1000
        )
        if not ahead:
            return
        if time.monotonic() - started > STALE_S:
            print(
                f"[launch] {name}: versions {ahead} undecided after {STALE_S:.0f} s; deciding v{version}",
                file=sys.stderr,
            )
            return
        if not said:
            print(
                f"[launch] {name}: v{version} waits for the promotion of versions {ahead} (other launches)",
                file=sys.stderr,
            )
            said = True
        time.sleep(POLL_S)


def promotion_reason(client: MlflowClient, name: str, version: str) -> str:
    """The reason ``promote_if_better`` recorded for ``version``."""
    return retrying(lambda: client.get_model_version(name, version)).tags.get(PROMOTION_TAG, "")


def _decide(client: MlflowClient, name: str, version: str, score: float, mode: str) -> tuple[bool, str]:
    current = champion(client, name)
    if current is None:
        return True, "first champion"
    if str(current.version) == str(version):  # moved by this version's publish before the store went away
        return True, "champion (its promotion resumed after the store went away)"
    new_tags = retrying(lambda: client.get_model_version(name, version)).tags
    if differs := incomparable(new_tags, current.tags):
        return False, f"not comparable with champion v{current.version} ({differs}); champion kept"
    best = float(current.tags.get("val_score", "nan"))
    if best != best:  # the champion has no valid score: any scored version replaces it
        return True, f"champion v{current.version} had no valid score"
    beaten = score > best if mode == "max" else score < best
    verdict = "better than" if beaten else "not better than"
    kept = "" if beaten else "; champion kept"
    return beaten, f"{current.tags.get('metric')} {score:.4f} {verdict} champion v{current.version} ({best:.4f}){kept}"
