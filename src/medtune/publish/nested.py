"""A nested launch's answer: every image's out-of-sample prediction, pooled from its outer folds' searches.

Outer fold ``k``'s search (a child run of the launch, tagged ``outer_fold``) never saw fold ``k``'s images
(``medtune.data.outer``); its winner's ``test_predictions.npz`` are that fold's predictions. Pooled over the
K folds they cover every image once, and the metrics over all N images (95% bootstrap intervals over
images, stratified by class, and over seeds where ``--repeats`` gave any) estimate how well the whole
procedure (search + training) does on images it did not see: neither the configuration nor the weights
that predicted an image were chosen with it. Per outer fold: its test metrics and its winning
configuration, and in words whether the folds chose alike.

Logged on the launch's run: ``outer_predictions.npz`` (``image_ids``, ``outer_fold``, the task's arrays),
``nested/<metric>`` with ``_low`` / ``_high``, ``outer/fold<k>/<metric>``, ``outer_winners.json`` and
``nested.md`` (the same words the terminal shows).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from medtune.scoring.bootstrap import METRICS, Interval, _interval, seed_bootstrap
from medtune.tracking.store import read_arrays, retrying

OUTER_TAG = "outer_fold"  # on an outer fold's run: its index
STAGE_TAG = "nested_stage"  # on a nested launch's child runs: "outer" or "refit"
NESTED_TAG = "nested_outer_folds"  # on a nested launch's run: K
DIGEST_TAG = "outer_folds_digest"  # on a nested launch's run: which image each outer fold held out
PREDICTIONS = "outer_predictions.npz"
WINNERS = "outer_winners.json"
TEXT = "nested.md"
RESAMPLES = 1000


@dataclass(frozen=True)
class OuterFold:
    """One outer fold's search, as its run recorded it."""

    k: int
    run_id: str
    test: dict[str, float]  # its winner's test metrics on the fold's images (``test/<name>``)
    config: dict[str, str]  # its winner's searched values (``best.<key>``)
    arrays: dict[str, np.ndarray]  # its ``test_predictions.npz``


def read_fold(client: MlflowClient, run, k: int, searched: list[str]) -> OuterFold:
    """Outer fold ``k`` from its finished run ``run``; raises ``RuntimeError`` if it logged no predictions."""
    arrays = retrying(lambda: read_arrays(client, run.info.run_id, "test_predictions.npz"))
    if arrays is None:
        raise RuntimeError(f"outer fold {k} (run {run.info.run_id}) logged no test_predictions.npz")
    metrics = run.data.metrics
    test = {key: value for key, value in metrics.items() if key.startswith("test/")}
    config = {key: run.data.params[f"best.{key}"] for key in searched if f"best.{key}" in run.data.params}
    return OuterFold(k, run.info.run_id, test, config, arrays)


def pool(folds: list[OuterFold]) -> dict[str, np.ndarray]:
    """The folds' per-image arrays concatenated (fold 0 first), with ``outer_fold`` per image.

    Only arrays with one row per image are pooled (``image_ids``, ``labels``, ``probs``, ``probs_seeds``
    on axis 1, ``iou``); the overlay figures of the first images of each fold are not.
    """
    kind = str(folds[0].arrays["report_kind"])
    out: dict[str, np.ndarray] = {"report_kind": np.array(kind)}
    n = [len(f.arrays["image_ids"]) for f in folds]
    out["image_ids"] = np.concatenate([f.arrays["image_ids"] for f in folds])
    out["outer_fold"] = np.concatenate([np.full(size, f.k) for f, size in zip(folds, n)])
    for key in ("labels", "probs", "iou"):
        if all(key in f.arrays and len(f.arrays[key]) == size for f, size in zip(folds, n)):
            out[key] = np.concatenate([f.arrays[key] for f in folds])
    seeds = {f.arrays["probs_seeds"].shape[0] for f in folds if "probs_seeds" in f.arrays}
    if len(seeds) == 1 and all("probs_seeds" in f.arrays for f in folds):
        out["probs_seeds"] = np.concatenate([f.arrays["probs_seeds"] for f in folds], axis=1)
    if "class_names" in folds[0].arrays:
        out["class_names"] = folds[0].arrays["class_names"]
    return out


def pooled_scores(arrays: dict[str, np.ndarray]) -> dict[str, Interval]:
    """Every metric over all pooled images with its 95% interval (bootstrap over images, and seeds).

    Single-label classification: ``medtune.scoring.bootstrap.METRICS`` (mean over seeds where there
    are several, the two-level bootstrap); segmentation: the mean per-image IoU (``image_iou``); a
    multilabel task: none (its per-fold metrics only).
    """
    kind = str(arrays["report_kind"])
    if kind == "classification" and "probs" in arrays:
        labels = arrays["labels"].astype(int)
        probs = arrays.get("probs_seeds", arrays["probs"][None])
        return {name: seed_bootstrap(labels, [probs], metric)[0][0] for name, metric in METRICS.items()}
    if kind == "segmentation" and "iou" in arrays:
        iou = arrays["iou"].astype(float)
        rng = np.random.default_rng(0)
        samples = iou[rng.integers(0, len(iou), size=(RESAMPLES, len(iou)))].mean(axis=1)
        return {"image_iou": _interval(float(iou.mean()), samples, 0.95)}
    return {}


def agreement(folds: list[OuterFold], searched: dict[str, str]) -> list[str]:
    """Per searched key (name -> its kind in the space), in words, what the outer folds' winners chose, after
    a first line on whether they agree on every ``choice`` key (sampled numbers always differ a little:
    their range is listed instead)."""
    k, lines, differ = len(folds), [], []
    for key in searched:
        values = [f.config[key] for f in folds if key in f.config]
        if not values:
            continue
        numbers = _numbers(values)
        if len(set(values)) == 1:
            lines.append(f"`{key}`: {values[0]} in all {len(values)} outer folds")
        elif numbers is not None and searched[key] != "choice":
            spread = f", a factor {max(numbers) / min(numbers):.3g} apart" if min(numbers) > 0 else ""
            lines.append(f"`{key}`: {min(numbers):.3g} to {max(numbers):.3g} over {len(values)} folds{spread}")
        else:
            differ.append(key)
            tally = ", ".join(f"{value} ({n})" for value, n in Counter(values).most_common())
            lines.append(f"`{key}`: {tally} of {len(values)} folds")
    if differ:
        verdict = (
            f"The {k} outer folds' winners differ in {', '.join(differ)}: the estimate describes the search "
            "procedure, not one configuration."
        )
    else:
        verdict = f"The {k} outer folds' winners agree on every choice; numeric keys vary as listed."
    return [verdict, *lines]


def _numbers(values: list[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def report(
    space_name: str, folds: list[OuterFold], scores: dict[str, Interval], arrays: dict, searched: dict[str, str]
) -> list[str]:
    """The nested result in words (the terminal's lines and ``nested.md``)."""
    n, k = len(arrays["image_ids"]), len(folds)
    sizes = "/".join(str(len(f.arrays["image_ids"])) for f in folds)
    seeds = arrays["probs_seeds"].shape[0] if "probs_seeds" in arrays else 1
    over = f"{n} images" + (f" x {seeds} seeds" if seeds > 1 else "")
    lines = [f"== nested cross-validation of {space_name}: {k} outer folds over {n} images (per fold: {sizes}) =="]
    lines.append(
        f"every image predicted once, by the winner of a search that never saw it (95% intervals: bootstrap over {over}):"
    )
    lines += [f"  {name} {s.value:.3f} [{s.low:.3f}, {s.high:.3f}]" for name, s in sorted(scores.items())]
    if not scores:
        lines.append("  (no pooled metric for this task; see each outer fold's test metrics below)")
    lines.append("per outer fold (its winner on its own held-out images):")
    for f in folds:
        shown = ", ".join(f"{key.split('/', 1)[1]} {value:.3f}" for key, value in sorted(f.test.items()))
        lines.append(f"  fold {f.k} ({len(f.arrays['image_ids'])} images, run {f.run_id}): {shown}")
    lines.append("winners:")
    lines += [f"  {line}" for line in agreement(folds, searched)]
    return lines


def log_nested(client: MlflowClient, launch_run_id: str, folds: list[OuterFold], arrays: dict, scores, lines) -> None:
    """Everything the module docstring lists, on the launch's run."""
    metrics = []
    for name, s in scores.items():
        for suffix, value in (("", s.value), ("_low", s.low), ("_high", s.high)):
            if math.isfinite(value):
                metrics.append(Metric(f"nested/{name}{suffix}", value, 0, 0))
    for f in folds:
        metrics += [Metric(f"outer/fold{f.k}/{key}", value, 0, 0) for key, value in f.test.items()]
    for start in range(0, len(metrics), 500):
        retrying(lambda chunk=metrics[start : start + 500]: client.log_batch(launch_run_id, metrics=chunk))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / PREDICTIONS
        np.savez_compressed(path, **arrays)
        retrying(lambda: client.log_artifact(launch_run_id, str(path)))
    winners = [{"fold": f.k, "run_id": f.run_id, "config": f.config, "test": f.test} for f in folds]
    retrying(lambda: client.log_text(launch_run_id, json.dumps(winners, indent=2), WINNERS))
    retrying(lambda: client.log_text(launch_run_id, "\n".join(lines) + "\n", TEXT))


def estimate_line(scores: dict[str, Interval], metric: str, n: int, k: int) -> str:
    """One line for the refit model's card: the nested estimate of the procedure's objective metric."""
    name = metric.split("/", 1)[-1]
    s = scores.get(name) or next(iter(scores.values()), None)
    if s is None:
        return f"nested cross-validation over {n} images in {k} outer folds (per-fold metrics on the launch's run)"
    shown = name if name in scores else next(iter(scores))
    return f"{shown} {s.value:.3f} [{s.low:.3f}, {s.high:.3f}] over {n} images in {k} outer folds"
