"""Replayed learning curves: a trainable that reports a stored curve instead of training.

A curve table holds, for a finite set of sampled configurations, every epoch's value of the
objective (``benchmarks/curves/*.npz``). ``space_of`` turns it into a real ``SearchSpace`` whose
params are the table's hyperparameters, so the platform's own searchers and schedulers
(``trainables.search.make_tuner`` with ``SearchPolicy(trainable=replay_trial)``) sample, stop and
promote exactly as in a real search; ``replay_trial`` maps each sampled configuration to the
table's nearest row (normalised space: log scale for loguniform keys, exact match on choices) and
reports that row's curve epoch by epoch with ``tune.report``: the space's metric, one report per
epoch (so ``training_iteration`` counts epochs, the unit of cost), optionally sleeping a scaled
time per epoch so that asynchronous scheduling sees trials overlap. Real trials are untouched.

Table file (numpy ``.npz``, no pickles): ``curves`` (rows x epochs, float16/float32; NaN after the
last epoch of a curve that stopped early), one column
``param/<key>`` per hyperparameter (float; choices as strings; NaN / "" where a ``when:`` key is
absent), and ``meta``, a JSON string: ``name``, ``metric``, ``mode``, ``task``, ``source`` and
``params`` ({key: {kind: [low, high] or [choices]}}), the space the rows were sampled from.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune

from medtune.config.spaces import Param, SearchSpace
from medtune.config.validate import KINDS
from trainables.sampling import flat_config

ROW_KEY = "replay/row"  # reported with each epoch: the table row a trial replays
EPOCH_FILE = "epoch"  # a replay checkpoint: the number of epochs reported


class TableError(ValueError):
    """A curve table or a configuration it cannot answer; the message is one line naming the file."""


@dataclass(frozen=True)
class CurveTable:
    """Learning curves of ``len(curves)`` configurations; ``columns[key][i]`` is row i's value of ``key``."""

    name: str
    path: Path
    metric: str
    mode: str
    task: str
    source: str
    params: tuple[Param, ...]
    columns: dict[str, np.ndarray]
    curves: np.ndarray  # rows x epochs, float32

    @property
    def epochs(self) -> int:
        return int(self.curves.shape[1])

    def best(self, epochs: int | None = None) -> float:
        """The best value any row reaches within ``epochs`` [all]: the optimum a search can find."""
        window = self.curves[:, : epochs or self.epochs]
        return float(np.nanmax(window) if self.mode == "max" else np.nanmin(window))

    def row(self, config: dict[str, Any]) -> int:
        """The row replaying ``config``: same choices (and same absent ``when:`` keys), then the
        nearest numeric values, each scaled to [0, 1] over its range (log scale for loguniform)."""
        keep = np.ones(len(self.curves), dtype=bool)
        distance = np.zeros(len(self.curves))
        for param in self.params:
            column, value = self.columns[param.name], config.get(param.name)
            if param.kind == "choice":
                keep &= column == ("" if value is None else str(value))
            elif value is None:
                keep &= np.isnan(column)
            else:
                scaled = _scale(param, column)
                keep &= ~np.isnan(scaled)
                distance += np.nan_to_num(scaled - _scale(param, np.float64(value)), nan=0.0) ** 2
        if not keep.any():
            raise TableError(f"{self.path}: no row has the choices of {config}")
        return int(np.argmin(np.where(keep, distance, np.inf)))


def _scale(param: Param, values: np.ndarray) -> np.ndarray:
    low, high = float(param.values[0]), float(param.values[-1])
    if param.kind == "loguniform":
        values, low, high = np.log(values), math.log(low), math.log(high)
    return (np.asarray(values, dtype=np.float64) - low) / ((high - low) or 1.0)


def save_table(
    path: Path, *, meta: dict[str, Any], columns: dict[str, np.ndarray], curves: np.ndarray, dtype: str = "float16"
) -> None:
    """Write a table (``meta`` as in the module docstring) compactly; the file appears whole or not at all."""
    arrays = {f"param/{key}": np.asarray(values) for key, values in columns.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npz")
    np.savez_compressed(partial, curves=np.asarray(curves, dtype=dtype), meta=np.array(json.dumps(meta)), **arrays)
    partial.replace(path)


def load_table(path: Path) -> CurveTable:
    """Read and check a table written by ``save_table``."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            curves = data["curves"].astype(np.float32)
            columns = {key.removeprefix("param/"): data[key] for key in data.files if key.startswith("param/")}
    except (OSError, ValueError, KeyError) as err:
        raise TableError(f"{path}: not a curve table ({' '.join(str(err).split())[:200]})") from None
    params = tuple(_param(path, key, spec) for key, spec in meta.get("params", {}).items())
    for param in params:
        if param.name not in columns or len(columns[param.name]) != len(curves):
            raise TableError(f"{path}: column 'param/{param.name}' missing or not one value per row")
        if param.kind != "choice":
            columns[param.name] = columns[param.name].astype(np.float64)
    missing = {"name", "metric", "mode", "task"} - set(meta)
    if missing or curves.ndim != 2 or not params:
        raise TableError(f"{path}: expected meta keys name, metric, mode, task, params and 2-d curves")
    return CurveTable(
        name=meta["name"],
        path=path,
        metric=meta["metric"],
        mode=meta["mode"],
        task=meta["task"],
        source=meta.get("source", ""),
        params=params,
        columns=columns,
        curves=curves,
    )


def _param(path: Path, key: str, spec: dict) -> Param:
    kinds = [k for k in spec if k in KINDS]
    if len(kinds) != 1:
        raise TableError(f"{path}: meta params '{key}': expected one of {', '.join(KINDS)}")
    when = {ref: tuple(v if isinstance(v, list) else [v]) for ref, v in spec.get("when", {}).items()}
    return Param(key, kinds[0], tuple(spec[kinds[0]]), when)


def space_of(
    table: CurveTable,
    *,
    num_samples: int,
    max_epochs: int | None = None,
    grace_period: int = 1,
    reduction_factor: int = 2,
) -> SearchSpace:
    """The search space a real search over the table's configurations would have, with this budget."""
    epochs = min(max_epochs or table.epochs, table.epochs)
    budget = {
        "num_samples": num_samples,
        "max_epochs": epochs,
        "grace_period": min(grace_period, epochs),
        "reduction_factor": reduction_factor,
        "repeats": 1,
    }
    return SearchSpace(
        name=table.name,
        path=table.path,
        task=table.task,
        metric=table.metric,
        mode=table.mode,
        fixed={},
        params=table.params,
        budget=budget,
        description=table.source,
    )


@dataclass(frozen=True)
class ReplayContext:
    """What every replayed trial receives (passed to ``make_tuner`` as its ``context``).

    Args:
        table: the curves.
        max_epochs: epochs a trial may run (the space's budget).
        seconds_per_epoch: sleep per replayed epoch [0: as fast as Tune takes reports].
        checkpoints: each report carries a checkpoint (its epoch), and a trial restored from one goes on
            from there, as a real trial does: needed by schedulers that pause trials (HyperBand, BOHB).
    """

    table: CurveTable
    max_epochs: int
    seconds_per_epoch: float = 0.0
    checkpoints: bool = False


def replay_trial(config: dict, context: ReplayContext) -> None:
    """Report the table's curve for ``config``, one ``tune.report`` per epoch, until done or stopped.

    A curve that ends early (NaN after its last epoch: the task's own patience stopped that training)
    ends the trial there with ``early_stopped`` 1.0 on its last report, as ``EpochReport`` reports it.
    """
    row = context.table.row(flat_config(config))
    curve = context.table.curves[row, : context.max_epochs]
    length = int(np.argmax(np.isnan(curve))) if np.isnan(curve).any() else len(curve)
    for epoch in range(_start_epoch(), length):
        if context.seconds_per_epoch > 0:
            time.sleep(context.seconds_per_epoch)
        stopped = float(epoch + 1 == length < context.max_epochs)
        metrics = {context.table.metric: float(curve[epoch]), ROW_KEY: row, "early_stopped": stopped}
        if not context.checkpoints:
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / EPOCH_FILE).write_text(str(epoch + 1))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def _start_epoch() -> int:
    """Epochs already replayed: those of the checkpoint this trial was restored from, else 0."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        return int((Path(folder) / EPOCH_FILE).read_text())
