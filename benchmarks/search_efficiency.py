"""Search efficiency: trial-epochs ASHA + TPE needs to match random search without early stopping.

    python benchmarks/search_efficiency.py --quick   # 32 px, 4 random trials x 3 epochs, 1 seed (~1 min)
    python benchmarks/search_efficiency.py           # 64 px, 8 x 8 epochs (the space's budget), 3 seeds

Both searches are ``trainables.search.make_tuner`` over the synthetic segmentation space, with the
platform's trainable. Random: ``SearchPolicy(sampler="random", scheduler="fifo")`` (Optuna's
``RandomSampler`` on the same define-by-run space, so ``when:`` conditions hold), every trial to
``max_epochs``; its best ``val/iou`` over the whole budget is the target R*. ASHA + TPE: the default
policy, exactly as launched, with twice the samples (same epoch cap); its compute to reach R*
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

from common import WORK, load, synth_caches

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


def run(
    method: str, seed: int, space: SearchSpace, context: TrialContext, storage: Path, tpe_startup: int | None
) -> Curve:
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
    return curve(tuner.fit(), space.metric)


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


def _print_seed(seed: int, rnd: Curve, asha: Curve, seconds: float) -> float:
    """Print one seed's outcome; return ASHA+TPE's compute to reach random's best, as a fraction."""
    target, spent = rnd[-1][1], rnd[-1][0]
    reached = next((x for x, best in asha if best >= target), None)
    fraction = (reached if reached is not None else float("inf")) / spent
    print(
        f"seed {seed}: random best {target:.4f} after {spent} trial-epochs; ASHA+TPE best {asha[-1][1]:.4f} "
        f"after {asha[-1][0]}, reached R* at {reached} trial-epochs ({fraction:.2f} of random's) "
        f"[{seconds:.0f} s, {load()}]"
    )
    for method, c in (("random", rnd), ("asha_tpe", asha)):
        print(f"  curve {method}: " + " ".join(f"{x}:{y:.3f}" for x, y in c))
    return fraction


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--seeds", type=int, help="seeds 0..N-1 [3; 1 with --quick: each seed costs ~1 min of Ray start-up alone]"
    )
    p.add_argument(
        "--tpe-startup",
        type=int,
        help="random start-up trials of ASHA+TPE's TPE sampler [the platform's max(2, samples // 4); "
        "Optuna's default, 10, is more than the space's samples, so TPE would never leave random sampling]",
    )
    args = p.parse_args()
    args.seeds = args.seeds or (1 if args.quick else 3)
    from trainables.driver import ray_session
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
    curves: dict[str, list[Curve]] = {"random": [], "asha_tpe": []}
    fractions = []
    with ray_session():
        for seed in range(args.seeds):
            start = time.time()
            rnd = run("random", seed, _space(size, samples, epochs, args.quick), context, WORK / "search", None)
            asha_space = _space(size, 2 * samples, epochs, args.quick)
            asha = run("asha_tpe", seed, asha_space, context, WORK / "search", args.tpe_startup)
            curves["random"].append(rnd)
            curves["asha_tpe"].append(asha)
            fractions.append(_print_seed(seed, rnd, asha, time.time() - start))
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
