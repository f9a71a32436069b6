"""Search efficiency: trial-epochs ASHA + TPE needs to match random search without early stopping.

    python benchmarks/search_efficiency.py --quick   # 32 px, 4 random trials x 3 epochs, 1 seed (~1 min)
    python benchmarks/search_efficiency.py           # 64 px, 8 x 8 epochs (the space's budget), 3 seeds

Both searches drive the platform's trainable (``trainables.trial.run_trial``) over the synthetic
segmentation space. Random: ``OptunaSearch`` with Optuna's ``RandomSampler`` on the same
define-by-run space (so ``when:`` conditions hold), FIFO scheduler, every trial to ``max_epochs``;
its best ``val/iou`` over the whole budget is the target R*. ASHA + TPE: ``trainables.search.
make_tuner`` exactly as launched, with twice the samples (same epoch cap); its compute to reach R*
is the number of trial-epochs reported up to the first result >= R*, in report order. Curves
(best val/iou so far against trial-epochs) are printed and drawn to ``WORK/search_efficiency.png``
(``search_efficiency-quick.png`` for ``--quick``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import TYPE_CHECKING

from common import PROJECT_DIR, WORK, load, synth_caches

if TYPE_CHECKING:
    from pathlib import Path

    from ray.tune import ResultGrid

    from medtune.spaces import SearchSpace
    from trainables.trial import TrialContext

Curve = list[tuple[int, float]]  # (trial-epochs so far, best val/iou so far)


def _space(size: int, samples: int, epochs: int, quick: bool) -> SearchSpace:
    from medtune.spaces import load_space

    space = load_space("segmentation")
    grace = 1 if quick else space.budget["grace_period"]
    budget = {**space.budget, "num_samples": samples, "max_epochs": epochs, "grace_period": grace}
    return dataclasses.replace(space, fixed={**space.fixed, "data.image_size": size}, budget=budget)


def curve(grid: ResultGrid, metric: str) -> Curve:
    """Every reported epoch of every trial, in report order, as a best-so-far curve."""
    rows = []
    for result in grid:
        df = result.metrics_dataframe
        if df is None or metric not in df:
            continue
        rows += [(int(t), float(s), float(v)) for t, s, v in zip(df["timestamp"], df["time_total_s"], df[metric])]
    best, out = float("-inf"), []
    for i, (_, _, value) in enumerate(sorted(rows), start=1):  # report order (1 s stamps, ties by trial time)
        best = max(best, value)
        out.append((i, best))
    return out


def run(method: str, seed: int, space: SearchSpace, context: TrialContext, storage: str) -> Curve:
    from optuna.samplers import RandomSampler
    from ray import tune
    from ray.tune import CheckpointConfig, RunConfig, TuneConfig, Tuner
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from trainables.sampling import DefineByRun
    from trainables.search import Resources, make_tuner
    from trainables.trial import run_trial

    name = f"{method}-s{seed}-{time.time():.0f}"
    resources = Resources(cpus_per_trial=1, gpus_per_trial=0, max_concurrent=0, max_failures=0)
    if method == "asha_tpe":
        tuner = make_tuner(
            space, context=context, resources=resources, storage_path=storage, name=name, seed=seed, callbacks=[]
        )
    else:
        searcher = OptunaSearch(
            space=DefineByRun(space), metric=space.metric, mode=space.mode, sampler=RandomSampler(seed=seed)
        )
        trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), {"cpu": 1})
        tuner = Tuner(
            trainable,
            tune_config=TuneConfig(
                metric=space.metric,
                mode=space.mode,
                search_alg=searcher,
                scheduler=FIFOScheduler(),
                num_samples=space.budget["num_samples"],
                reuse_actors=True,
            ),
            run_config=RunConfig(
                name=name, storage_path=storage, verbose=0, checkpoint_config=CheckpointConfig(num_to_keep=1)
            ),
        )
    return curve(tuner.fit(), space.metric)


def use_tpe_startup(n: int) -> None:
    """Override the number of random start-up trials of the platform's ``TPESampler``.

    ``trainables/search.py`` now uses ``max(2, num_samples // 4)`` (the fix this benchmark led to);
    before it, Optuna's default of 10 made every shipped space's search pure random sampling.
    """
    import trainables.search as search

    original = search.TPESampler

    def sampler(*, seed: int, n_startup_trials: int) -> object:
        return original(seed=seed, n_startup_trials=n)

    search.TPESampler = sampler


def plot(curves: dict[str, list[Curve]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (method, runs), color in zip(curves.items(), ("tab:blue", "tab:orange")):
        for i, c in enumerate(runs):
            ax.step([x for x, _ in c], [y for _, y in c], where="post", color=color, label=method if i == 0 else None)
    ax.set(xlabel="trial-epochs", ylabel="best val/iou so far", title="random (FIFO) vs ASHA + TPE, one line per seed")
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--seeds", type=int, help="seeds 0..N-1 [3; 1 with --quick: each seed costs ~1 min of Ray start-up alone]"
    )
    p.add_argument(
        "--tpe-startup",
        type=int,
        help="give ASHA+TPE a TPESampler with this many random start-up trials "
        "[Optuna's default, 10: more than the space's samples, so TPE never leaves random sampling]",
    )
    args = p.parse_args()
    args.seeds = args.seeds or (1 if args.quick else 3)
    if args.tpe_startup:
        use_tpe_startup(args.tpe_startup)
    import ray

    from trainables.trial import TrialContext

    size, samples, epochs = (32, 4, 3) if args.quick else (64, 8, 8)
    _, caches, k = synth_caches(size=size)
    context = TrialContext(
        task="segmentation",
        caches={size: caches},
        pred_masks=None,
        num_classes=k,
        max_epochs=epochs,
        seed=0,
        threads=1,
        precision="32-true",
    )
    ray.init(
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(PROJECT_DIR)}},
    )
    curves: dict[str, list[Curve]] = {"random": [], "asha_tpe": []}
    fractions = []
    for seed in range(args.seeds):
        start = time.time()
        rnd = run("random", seed, _space(size, samples, epochs, args.quick), context, str(WORK / "search"))
        asha = run("asha_tpe", seed, _space(size, 2 * samples, epochs, args.quick), context, str(WORK / "search"))
        curves["random"].append(rnd)
        curves["asha_tpe"].append(asha)
        target, spent = rnd[-1][1], rnd[-1][0]
        reached = next((x for x, best in asha if best >= target), None)
        fraction = (reached if reached is not None else float("inf")) / spent
        fractions.append(fraction)
        print(
            f"seed {seed}: random best {target:.4f} after {spent} trial-epochs; ASHA+TPE best {asha[-1][1]:.4f} "
            f"after {asha[-1][0]}, reached R* at {reached} trial-epochs ({fraction:.2f} of random's) "
            f"[{time.time() - start:.0f} s, {load()}]"
        )
        for method, c in (("random", rnd), ("asha_tpe", asha)):
            print(f"  curve {method}: " + " ".join(f"{x}:{y:.3f}" for x, y in c))
    ray.shutdown()
    stem = WORK / ("search_efficiency-quick" if args.quick else "search_efficiency")
    plot(curves, stem.with_suffix(".png"))
    stem.with_suffix(".json").write_text(json.dumps(curves))
    print(f"curves: {stem}.png, {stem}.json")
    ordered = sorted(fractions)
    print(
        f"RATIO ASHA+TPE / random compute to reach random's best = median {ordered[len(ordered) // 2]:.2f} "
        f"(per seed: {', '.join(f'{f:.2f}' for f in fractions)}; target <= 0.33)"
    )


if __name__ == "__main__":
    main()
