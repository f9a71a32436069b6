"""Record full learning curves on BUSI into a stored curve table (``benchmarks/curves/busi-<space>.npz``).

    python benchmarks/make_busi_curves.py                      # 300 configurations of whole_cls (hours)
    python benchmarks/make_busi_curves.py --rows 3 --out /tmp/busi-try.npz   # a try: three configurations
    python benchmarks/make_busi_curves.py --space segmentation --rows 200   # the segmentation space

Configurations are drawn from the shipped space (``--space``, default ``whole_cls``) with Optuna's
``RandomSampler`` through the platform's define-by-run space (``trainables.sampling.DefineByRun``,
so ``when:`` conditions hold) and each is trained as a trial trains it (``medtune.engine.build``,
``medtune.engine.trainer.make_trainer``, seed ``--train-seed``) on BUSI's train split at ``--size`` px
for the space's ``max_epochs``; every epoch's value of the space's objective on val is recorded
(NaN after the last epoch of a training the task's own patience stopped). No Ray: the curves are
what a trial would report, without its overhead.

Re-runnable: each finished configuration is appended to ``<out>.progress.<K>.jsonl`` (beside the
output: its row number, configuration and curve), and a run with the same arguments skips the rows
it finds in any such file, so an interrupted run continues; the table is written by the run that
finds every row done, and the progress files are then deleted. ``--shard K/N`` trains rows
``K, K + N, ...`` only, so N processes of one thread each share the cores:

    for k in 0 1; do python benchmarks/make_busi_curves.py --shard $k/2 & done; wait
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
CURVES_DIR = PROJECT / "benchmarks" / "curves"
BUSI = PROJECT.parent / "shared" / "datasets" / "busi" / "coco_all.json"
CACHE = Path("/tmp/medtune-bench/cache")
SOURCE = (
    "BUSI (Al-Dhabyani et al. 2020, doi:10.1016/j.dib.2019.104863), curves recorded by benchmarks/make_busi_curves.py"
)


def configurations(space, rows: int, seed: int) -> list[dict]:  # noqa: ANN001 - medtune.config.spaces.SearchSpace
    """``rows`` configurations drawn at random from ``space``, as a search's random sampler draws them."""
    import optuna

    from trainables.sampling import DefineByRun

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    draw, out = DefineByRun(space), []
    for _ in range(rows):
        trial = study.ask()
        out.append({**draw(trial), **trial.params})
        study.tell(trial, 0.0)
    return out


def train_curve(space, config: dict, caches: dict, num_classes: int, *, epochs: int, seed: int) -> list[float]:  # noqa: ANN001
    """Every epoch's val objective of one configuration, trained as a trial would train it."""
    import pytorch_lightning as pl

    from medtune.engine.build import build_datamodule, build_system
    from medtune.engine.trainer import make_trainer

    class Record(pl.Callback):
        def __init__(self) -> None:
            self.values: list[float] = []

        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.values.append(float(trainer.callback_metrics[space.metric]))  # after the epoch's validation

    pl.seed_everything(seed, workers=True, verbose=False)
    config = {**config, "data.num_workers": 0}
    system = build_system(space.task, config, num_classes=num_classes, max_epochs=epochs, train_cache=caches["train"])
    data = build_datamodule(config, caches=caches, num_classes=num_classes)
    record = Record()
    make_trainer(max_epochs=epochs, callbacks=[record], seed=seed).fit(system, datamodule=data)
    return record.values + [float("nan")] * (epochs - len(record.values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="whole_cls", help="a shipped search space (whole_cls, segmentation, ...)")
    parser.add_argument("--rows", type=int, default=300, help="configurations to train")
    parser.add_argument("--size", type=int, default=64, help="image side in px")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    parser.add_argument("--train-seed", type=int, default=0, help="the training seed of every configuration")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--data", type=Path, default=BUSI, help="BUSI's coco_all.json")
    parser.add_argument("--out", type=Path, help="the table [benchmarks/curves/busi-<space>.npz]")
    parser.add_argument("--shard", default="0/1", help="K/N: train rows K, K + N, ... only [0/1]")
    args = parser.parse_args()
    try:
        shard, shards = (int(part) for part in args.shard.split("/"))
        if not 0 <= shard < shards:
            raise ValueError
    except ValueError:
        sys.exit(f"--shard {args.shard}: expected K/N with 0 <= K < N, e.g. 0/2")
    if not args.data.is_file():
        sys.exit(f"--data {args.data}: no such file (BUSI's coco_all.json, see ../shared/datasets/busi)")

    import torch

    from medtune.config.spaces import load_space
    from medtune.config.validate import SpaceError
    from medtune.data.cache import build_cache
    from medtune.data.coco import resolve_dataset

    torch.set_num_threads(args.threads)
    try:
        space = load_space(args.space)
    except SpaceError as err:
        sys.exit(str(err))
    out = args.out or CURVES_DIR / f"busi-{space.name}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    epochs = space.budget["max_epochs"]
    space_fixed = {**space.fixed, "data.image_size": args.size}
    dataset = resolve_dataset(args.data, cache_root=CACHE, seed=0)
    caches = {split: str(build_cache(dataset, split, args.size, CACHE)) for split in ("train", "val", "test")}
    wanted = [{**c, **space_fixed} for c in configurations(space, args.rows, args.seed)]
    done = finished(out, wanted)
    progress = out.with_name(f"{out.name}.progress.{shard}.jsonl")
    for i in range(shard, args.rows, shards):
        if i in done:
            continue
        start = time.perf_counter()
        curve = train_curve(space, wanted[i], caches, dataset.num_classes, epochs=epochs, seed=args.train_seed)
        row = {"row": i, "config": wanted[i], "curve": curve, "seconds": time.perf_counter() - start}
        with progress.open("a") as file:
            file.write(json.dumps(row) + "\n")
        print(f"row {i + 1}/{args.rows}: {row['seconds']:.0f} s, best {np.nanmax(curve):.3f}", flush=True)
    done = finished(out, wanted)
    if len(done) < args.rows:
        print(f"{len(done)} of {args.rows} rows done; the table is written by the run that finishes the last one")
        return
    save(out, space, [done[i] for i in range(args.rows)], args)
    for file in out.parent.glob(f"{out.name}.progress.*.jsonl"):
        file.unlink(missing_ok=True)


def finished(out: Path, wanted: list[dict]) -> dict[int, dict]:
    """Rows already recorded in any progress file beside ``out``, by row number; exits if one was drawn otherwise."""
    done = {}
    for file in sorted(out.parent.glob(f"{out.name}.progress.*.jsonl")):
        for line in file.read_text().splitlines():
            row = json.loads(line)
            i = row["row"]
            if i < len(wanted) and row["config"] != json.loads(json.dumps(wanted[i])):
                sys.exit(f"{file}: row {i} was drawn with other arguments; delete it or use the same ones")
            done[i] = row
    return done


def save(out: Path, space, rows: list[dict], args: argparse.Namespace) -> None:  # noqa: ANN001
    """The table, in ``trainables.replay``'s format: the space's params and objective."""
    from trainables.replay import save_table

    columns = {}
    for param in space.params:
        values = [row["config"].get(param.name) for row in rows]
        if param.kind == "choice":
            columns[param.name] = np.array(["" if v is None else str(v) for v in values])
        else:
            columns[param.name] = np.array([np.nan if v is None else float(v) for v in values])
    params = {
        p.name: {p.kind: list(p.values), **({"when": {k: list(v) for k, v in p.when.items()}} if p.when else {})}
        for p in space.params
    }
    seconds = sum(row["seconds"] for row in rows)
    meta = {
        "name": f"busi-{space.name}",
        "metric": space.metric,
        "mode": space.mode,
        "task": space.task,
        "source": f"{SOURCE}; space {space.name} at {args.size} px, sampler seed {args.seed}, "
        f"training seed {args.train_seed}; {len(rows)} rows took {seconds / 3600:.1f} h of training",
        "params": params,
    }
    save_table(out, meta=meta, columns=columns, curves=np.array([row["curve"] for row in rows]), dtype="float32")
    print(f"{out}: {len(rows)} rows x {space.budget['max_epochs']} epochs, {seconds:.0f} s of training")


if __name__ == "__main__":
    main()
