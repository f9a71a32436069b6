"""Search efficiency: trial-epochs ASHA + TPE needs to match random search without early stopping.

    python benchmarks/search_efficiency.py --quick   # 32 px, 4 random trials x 3 epochs, 1 seed (~1 min)
    python benchmarks/search_efficiency.py           # 64 px, 8 x 8 epochs (the space's budget), 5 seeds

Both searches are ``trainables.search.make_tuner`` over the synthetic segmentation space, with the
platform's trainable. Random: ``SearchPolicy(sampler="random", scheduler="fifo")`` (Optuna's
``RandomSampler`` on the same define-by-run space, so ``when:`` conditions hold), every trial to
``max_epochs``; its best ``val/iou`` over the whole budget is the target R*. ASHA + TPE: the default
policy, exactly as launched, with twice the samples (same epoch cap); its compute to reach R*
is the number of trial-epochs reported up to the first result >= R*, in report order. Curves
(best val/iou so far against trial-epochs) are printed and drawn to ``WORK/search_efficiency.png``
(``search_efficiency-quick.png`` for ``--quick``). The last line, ``RATIO``, is the median share
over the seeds (target <= 0.33) and says how many seeds it rests on.

Seeding (the documented measurement): for seed s, both arms are seeded s. Optuna's ``TPESampler``
draws its random start-up trials with its own ``RandomSampler(seed=s)``, the random arm's sampler,
so ASHA + TPE's first trials (those asked while fewer than ``tpe_startup`` trials have finished)
are the random arm's first configurations, trained with the same training seed to the same
scores: the two arms are paired, not independent, and ASHA + TPE gets the random arm's early
configurations for free. Each seed's line says how many of ASHA + TPE's configurations are random's.
``--random-seed-offset K`` seeds the random arm s + K instead (independent arms); it measures
something else and is not the documented number.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import TYPE_CHECKING

from common import WORK, load, median, synth_caches

if TYPE_CHECKING:
    from pathlib import Path

    from ray.tune import ResultGrid

    from medtune.config.spaces import SearchSpace
    from trainables.trial import TrialContext

Curve = list[tuple[int, float]]  # (trial-epochs so far, best val/iou so far)


def _space(size: int, samples: int, epochs: int, quick: bool) -> SearchSpace:
    from medtune.config.spaces import load_space

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


def configs(grid: ResultGrid) -> list[str]:
    """Each trial's configuration, as sorted JSON."""
    return [json.dumps(r.config, sort_keys=True) for r in grid if r.config]


def shared_count(random_configs: list[str], asha_configs: list[str]) -> int:
    """How many of ASHA+TPE's configurations the random arm also trained (with shared seeds: TPE's
    random start-up trials; with independent seeds, about 0: learning rates are drawn from a continuum)."""
    return sum(config in set(random_configs) for config in asha_configs)


def run(
    method: str, seed: int, space: SearchSpace, context: TrialContext, storage: Path, tpe_startup: int | None
) -> tuple[Curve, list[str]]:
    from trainables.search import Resources, SearchPolicy, make_tuner

    policies = {
        "random": SearchPolicy(sampler="random", scheduler="fifo"),
        "asha_tpe": SearchPolicy(tpe_startup=tpe_startup),
    }
    resources = Resources(cpus_per_trial=1, gpus_per_trial=0, max_concurrent=0, max_failures=0)
    tuner = make_tuner(
        space,
        context=context,
        resources=resources,
        storage_path=storage,
        name=f"{method}-s{seed}-{time.time():.0f}",
        seed=seed,
        callbacks=[],
        policy=policies[method],
    )
    grid = tuner.fit()
    if grid.errors:  # a failed trial changes what is measured: say so next to the numbers
        print(f"WARNING {method} seed {seed}: {len(grid.errors)} trial(s) failed: {grid.errors[0]!r}"[:400])
    return curve(grid, space.metric), configs(grid)


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


def _print_seed(seed: int, random_seed: int, rnd: Curve, asha: Curve, shared: int, seconds: float) -> float:
    """Print one seed's outcome; return ASHA+TPE's compute to reach random's best, as a fraction."""
    target, spent = rnd[-1][1], rnd[-1][0]
    reached = next((x for x, best in asha if best >= target), None)
    fraction = (reached if reached is not None else float("inf")) / spent
    print(
        f"seed {seed}: random (seed {random_seed}) best {target:.4f} after {spent} trial-epochs; "
        f"ASHA+TPE (seed {seed}) best {asha[-1][1]:.4f} after {asha[-1][0]}, reached R* at {reached} "
        f"trial-epochs ({fraction:.2f} of random's); {shared} of its configurations are random's "
        f"[{seconds:.0f} s, {load()}]"
    )
    for method, c in (("random", rnd), ("asha_tpe", asha)):
        print(f"  curve {method}: " + " ".join(f"{x}:{y:.3f}" for x, y in c))
    return fraction


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--seeds", type=int, help="seeds 0..N-1 [5; 1 with --quick: each seed costs ~1 min of Ray start-up alone]"
    )
    p.add_argument(
        "--tpe-startup",
        type=int,
        help="random start-up trials of ASHA+TPE's TPE sampler [the platform's max(2, samples // 4); "
        "Optuna's default, 10, is more than the space's samples, so TPE would never leave random sampling]",
    )
    p.add_argument(
        "--random-seed-offset",
        type=int,
        default=0,
        help="seed the random arm s + K instead of s [0, the documented measurement: the random arm and "
        "TPE's random start-up share seed s, so their first configurations are the same; K != 0: "
        "independent arms, a different measurement]",
    )
    args = p.parse_args()
    args.seeds = args.seeds or (1 if args.quick else 5)
    offset = args.random_seed_offset
    print(
        "seeding: "
        + (
            "random arm and ASHA+TPE share seed s per seed (TPE's random start-up draws the random arm's "
            "first configurations: paired arms, the documented measurement)"
            if offset == 0
            else f"random arm seeded s + {offset}, ASHA+TPE seeded s (independent arms: NOT the documented measurement)"
        )
    )
    from medtune.engine.recipe import Recipe
    from trainables.ray_session import ray_session
    from trainables.trial import TrialContext

    size, samples, epochs = (32, 4, 3) if args.quick else (64, 8, 8)
    _, caches, k = synth_caches(size=size)
    recipe = Recipe(task="segmentation", config={}, caches={}, pred_masks=None, num_classes=k, max_epochs=epochs)
    context = TrialContext(recipe=recipe, caches={size: caches}, pred_masks=None, threads=1)
    curves: dict[str, list[Curve]] = {"random": [], "asha_tpe": []}
    fractions = []
    with ray_session():
        for seed in range(args.seeds):
            start = time.time()
            random_space = _space(size, samples, epochs, args.quick)
            rnd, rnd_configs = run("random", seed + offset, random_space, context, WORK / "search", None)
            asha_space = _space(size, 2 * samples, epochs, args.quick)
            asha, asha_configs = run("asha_tpe", seed, asha_space, context, WORK / "search", args.tpe_startup)
            curves["random"].append(rnd)
            curves["asha_tpe"].append(asha)
            shared = shared_count(rnd_configs, asha_configs)
            fractions.append(_print_seed(seed, seed + offset, rnd, asha, shared, time.time() - start))
    suffix = f"-offset{offset}" if offset else ""
    stem = WORK / (("search_efficiency-quick" if args.quick else "search_efficiency") + suffix)
    plot(curves, stem.with_suffix(".png"))
    stem.with_suffix(".json").write_text(json.dumps(curves))
    print(f"curves: {stem}.png, {stem}.json")
    seeding = "shared seeds" if offset == 0 else f"random arm seeded s + {offset}"
    print(
        f"RATIO ASHA+TPE / random compute to reach random's best = median {median(fractions):.2f} over "
        f"{len(fractions)} seed{'s' if len(fractions) != 1 else ''} (per seed: {', '.join(f'{f:.2f}' for f in fractions)}; {seeding}; target <= 0.33)"
    )


if __name__ == "__main__":
    main()
