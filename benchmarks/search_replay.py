"""Searchers compared on replayed learning curves (``benchmarks/curves``), many seeds, same budget.

    python benchmarks/search_replay.py --quick      # one LCBench task, 2 seeds, 6 trials
    python benchmarks/search_replay.py --seeds 100  # every stored set, 100 seeds (an hour or more)

Each search is a real Ray Tune search through the platform's ``make_tuner`` whose trainable
replays a stored curve (``trainables.replay``): the samplers and schedulers see what they would
see in a real search, and cost is counted in replayed epochs. Methods: ``random`` (Optuna's
RandomSampler, FIFO), ``asha_random``, ``tpe`` (TPE, FIFO), ``asha_tpe`` (the platform's
default), built with ``SearchPolicy``; ``bohb`` (Ray's ``TuneBOHB`` + ``HyperBandForBOHB``, if
hpbandster and ConfigSpace are installed) and ``gp`` (Optuna's ``GPSampler`` in the platform's
Optuna searcher, FIFO), built here from Ray's and Optuna's public classes. FIFO methods get
``--trials`` configurations; ASHA and BOHB get three times as many, and every search is cut at
random's budget B = trials x epochs. Random is seeded s, every other method s + 10,000:
independent arms (TPE's start-up trials would otherwise repeat random's configurations).

Per method, with bootstrap 95% intervals over seeds: the share of B needed to reach random's
final best of the same seed (median; "never" when not reached within B) and the share of seeds
that never reach it, and the mean regret (table's best minus best found) at 25%, 50%, 100% of B.
Written to ``benchmarks/out/search_replay/`` (gitignored): ``results.json`` and
``regret.png`` (``-quick``, or the ``--sets`` given, in their names). Searches run ``--jobs`` at a time,
each in a process of its own joined to one Ray instance: a replayed search mostly waits on Ray Tune's
round trips, so several at once use the cores (searches are independent; within one, trials run
``--concurrent`` at a time as before). The last line is ``RATIO``: asha_tpe's median share on each set.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from common import PROJECT_DIR, load

CURVES = PROJECT_DIR / "benchmarks" / "curves"
OUT = PROJECT_DIR / "benchmarks" / "out" / "search_replay"
# Budgets per set: LCBench's 52 epochs are replayed in steps of 4 (13 rungs of cost, each 4 of its
# epochs: Ray takes about 10-100 reports a second, so 52 single epochs per trial would dominate);
# BUSI keeps whole_cls's own budget. (epoch step, grace period, reduction factor)
BUDGETS = {"lcbench": (4, 2, 2), "busi": (1, 2, 2)}
OWN_DOMAIN = ("whole_cls", "segmentation")  # the shipped spaces whose BUSI curves the benchmark expects
PLATFORM = {
    "random": ("random", "fifo", 1),
    "asha_random": ("random", "asha", 3),
    "tpe": ("tpe", "fifo", 1),
    "asha_tpe": ("tpe", "asha", 3),
}  # name -> (sampler, scheduler, samples per --trials)
EXTRA = {"bohb": 3, "gp": 1}
RANDOM_ARM_OFFSET = 10_000
BOOTSTRAP = 2000


def load_sets(names: list[str] | None, *, quiet: bool = False) -> dict:
    from trainables.replay import load_table

    tables = {p.stem: load_table(p) for p in sorted(CURVES.glob("*.npz"))}
    for space in OWN_DOMAIN:
        if not quiet and f"busi-{space}" not in tables:
            print(f"own-domain set missing: benchmarks/curves/busi-{space}.npz not recorded yet (make_busi_curves.py)")
    if names:
        unknown = set(names) - set(tables)
        if unknown:
            raise SystemExit(f"--sets: unknown {sorted(unknown)}; valid: {', '.join(tables)}")
        tables = {name: tables[name] for name in names}
    out = {}
    for name, table in tables.items():
        step, grace, rf = BUDGETS[name.split("-")[0]]
        curves = table.curves[:, step - 1 :: step]
        out[name] = (dataclasses.replace(table, curves=curves), grace, rf)
    return out


class Trace:
    """A driver-side callback recording every reported value in the order Tune processes them."""

    def __init__(self, metric: str) -> None:
        from ray import tune

        class _Trace(tune.Callback):
            def __init__(self) -> None:
                self.values: list[float] = []

            def on_trial_result(self, iteration, trials, trial, result, **info) -> None:  # noqa: ANN001
                self.values.append(float(result[metric]))

        self.callback = _Trace()


def bohb_available() -> bool:
    try:
        import ConfigSpace  # noqa: F401
        import hpbandster  # noqa: F401
    except ImportError:
        return False
    return True


def config_space(space, seed: int):  # noqa: ANN001, ANN201
    """The SearchSpace as a ConfigSpace space for TuneBOHB (no ``when:`` conditions)."""
    import ConfigSpace as CS

    cs = CS.ConfigurationSpace(seed=seed)
    for p in space.params:
        low, high = p.values[0], p.values[-1]
        if p.kind == "choice":
            cs.add(CS.CategoricalHyperparameter(p.name, list(p.values)))
        elif p.kind == "int":
            cs.add(CS.UniformIntegerHyperparameter(p.name, int(low), int(high)))
        else:
            cs.add(CS.UniformFloatHyperparameter(p.name, float(low), float(high), log=p.kind == "loguniform"))
    return cs


def extra_tuner(method: str, space, context, *, seed: int, trials: int, storage: Path, callback, concurrent: int):  # noqa: ANN001, ANN201
    """A Tuner for a method the platform lacks, built from Ray's and Optuna's public classes."""
    from ray import tune
    from ray.tune import RunConfig, TuneConfig, Tuner

    from trainables.replay import replay_trial

    budget = space.budget
    if method == "bohb":
        from ray.tune.schedulers.hb_bohb import HyperBandForBOHB
        from ray.tune.search.bohb import TuneBOHB

        # The objective goes to both (Ray forwards TuneConfig's to a searcher only along with a param_space).
        objective = {"metric": space.metric, "mode": space.mode}
        searcher = TuneBOHB(space=config_space(space, seed), seed=seed, **objective)
        scheduler = HyperBandForBOHB(
            time_attr="training_iteration",
            max_t=budget["max_epochs"],
            reduction_factor=budget["reduction_factor"],
            **objective,
        )
        context = dataclasses.replace(context, checkpoints=True)  # HyperBand pauses and resumes trials
    else:
        from optuna.samplers import GPSampler
        from ray.tune.schedulers import FIFOScheduler

        from trainables.optuna_search import AshaAwareOptunaSearch
        from trainables.sampling import DefineByRun

        sampler = GPSampler(seed=seed, n_startup_trials=max(2, trials // 4))  # the platform's TPE start-up rule
        searcher = AshaAwareOptunaSearch(
            space=DefineByRun(space), metric=space.metric, mode=space.mode, sampler=sampler,
            max_epochs=budget["max_epochs"],
        )  # fmt: skip
        scheduler = FIFOScheduler()
    trainable = tune.with_resources(tune.with_parameters(replay_trial, context=context), {"cpu": 2 / concurrent})
    tune_config = TuneConfig(
        metric=None if method == "bohb" else space.metric, mode=None if method == "bohb" else space.mode,
        search_alg=searcher, scheduler=scheduler,
        num_samples=trials * EXTRA[method], max_concurrent_trials=concurrent, reuse_actors=True,
    )  # fmt: skip
    run_config = RunConfig(name=method, storage_path=str(storage), callbacks=[callback], verbose=0)
    return Tuner(trainable, tune_config=tune_config, run_config=run_config)


def search(method: str, table, grace: int, rf: int, *, seed: int, args: argparse.Namespace) -> tuple[list, float]:  # noqa: ANN001
    """One search; (reported values in processing order, seconds)."""
    from trainables.replay import ReplayContext, replay_trial, space_of
    from trainables.search import Resources, SearchPolicy, make_tuner

    scale = PLATFORM[method][2] if method in PLATFORM else EXTRA[method]
    space = space_of(table, num_samples=args.trials * scale, grace_period=grace, reduction_factor=rf)
    context = ReplayContext(table=table, max_epochs=table.epochs, seconds_per_epoch=args.seconds_per_epoch)
    trace = Trace(table.metric)
    storage = Path(tempfile.mkdtemp(prefix="replay-runs-"))
    seed = seed if method == "random" else seed + RANDOM_ARM_OFFSET
    start = time.perf_counter()
    try:
        if method in PLATFORM:
            sampler, scheduler, _ = PLATFORM[method]
            policy = SearchPolicy(sampler=sampler, scheduler=scheduler, prune_checkpoints=False, trainable=replay_trial)
            tuner = make_tuner(
                space, context=context, resources=Resources(2 / args.concurrent, 0, args.concurrent, 0),
                storage_path=storage, name=method, seed=seed, callbacks=[trace.callback], policy=policy,
            )  # fmt: skip
        else:
            tuner = extra_tuner(
                method, space, context, seed=seed, trials=args.trials, storage=storage,
                callback=trace.callback, concurrent=args.concurrent,
            )  # fmt: skip
        tuner.fit()
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    return trace.callback.values, time.perf_counter() - start


def best_so_far(values: list[float], mode: str) -> np.ndarray:
    """Best value after each replayed epoch (index i: after i + 1 epochs)."""
    arr = np.array(values, dtype=np.float64) * (1 if mode == "max" else -1)
    return np.fmax.accumulate(np.nan_to_num(arr, nan=-np.inf)) * (1 if mode == "max" else -1)


def seed_stats(curve: np.ndarray, target: float, optimum: float, budget: int, mode: str) -> dict:
    """Share of ``budget`` to reach ``target`` (inf: never within it) and regret at 25/50/100% of it."""
    sign = 1 if mode == "max" else -1
    reached = np.nonzero(sign * curve[:budget] >= sign * target)[0]
    share = (reached[0] + 1) / budget if len(reached) else float("inf")
    regret = {}
    for frac in (0.25, 0.5, 1.0):
        n = min(int(round(frac * budget)), len(curve))
        regret[frac] = sign * (optimum - curve[n - 1]) if n > 0 else float("nan")
    return {"share": share, "regret": regret}


def interval(values: np.ndarray, stat, rng: np.random.Generator) -> tuple[float, float, float]:  # noqa: ANN001
    """(statistic, 2.5%, 97.5%) over seeds, by bootstrap."""
    draws = [stat(values[rng.integers(0, len(values), len(values))]) for _ in range(BOOTSTRAP)]
    low, high = np.percentile(draws, 2.5, method="lower"), np.percentile(draws, 97.5, method="higher")
    return float(stat(values)), float(low), float(high)  # no interpolation: a "never" share is inf


def summarise(name: str, table, runs: dict, seeds: int, trials: int) -> dict:  # noqa: ANN001
    """Per method: median share, never-share and mean regrets with intervals; prints the table.

    Random's budget B of a seed is the epochs its search replayed (trials x epochs, less where a
    curve stopped early), and its final best is the target of that seed."""
    rng = np.random.default_rng(0)
    optimum = table.best()
    out = {}
    print(f"\n{name}: {seeds} seeds, budget B = {trials} x {table.epochs} epochs, table's best {optimum:.4f}")
    print(
        f"{'method':12s} {'median share of B':>24s} {'never':>20s} "
        + " ".join(f"{'regret@' + str(int(f * 100)) + '%':>24s}" for f in (0.25, 0.5, 1.0))
    )
    for method, curves in runs.items():
        stats = [
            seed_stats(c, runs["random"][s][-1], optimum, len(runs["random"][s]), table.mode)
            for s, c in enumerate(curves)
        ]
        shares = np.array([s["share"] for s in stats])
        row = {
            "share": interval(shares, np.median, rng),
            "never": interval(np.isinf(shares).astype(float), np.mean, rng),
        }
        for frac in (0.25, 0.5, 1.0):
            row[f"regret@{frac}"] = interval(np.array([s["regret"][frac] for s in stats]), np.mean, rng)
        out[method] = row
        cells = [f"{v:.3f} [{lo:.3f}, {hi:.3f}]" for v, lo, hi in row.values()]
        print(f"{method:12s} " + " ".join(f"{c:>24s}" for c in cells))
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items()):
        budget = res["budget"]
        for method, curves in res["curves"].items():
            regret = np.array(
                [[res["sign"] * (res["optimum"] - c[min(i, len(c) - 1)]) for i in range(budget)] for c in curves]
            )
            ax.plot(np.arange(1, budget + 1) / budget, regret.mean(axis=0), label=method)
        ax.set(title=name, xlabel="compute (share of random's budget)", ylabel="mean regret")
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _ray_init(**kwargs: object) -> object:
    """``ray.init`` as every process of the benchmark calls it: quiet, with the ``trainables`` code."""
    import os

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray

    import trainables

    # log_to_driver off: BOHB's trials log every checkpoint and restore.
    context = ray.init(log_to_driver=False, logging_level="ERROR", runtime_env={"py_modules": [trainables]}, **kwargs)
    logging.getLogger("ray.tune").setLevel(logging.ERROR)  # "Remote file not found" of trials deleted with their search
    return context


def start_ray(jobs: int) -> str:
    """Start this machine's Ray for the searches; its address, which the search processes join.

    Every search asks for 2 CPUs (its ``--concurrent`` trials share them), so ``jobs`` searches at once
    need ``2 x jobs`` logical CPUs; a replayed trial only reads a table, so they share the real cores well."""
    start = time.perf_counter()
    context = _ray_init(num_cpus=2 * jobs, include_dashboard=False)
    print(f"ray.init {time.perf_counter() - start:.1f} s ({load()}); {jobs} searches at once")
    return context.address_info["address"]


def _join(address: str) -> None:
    """A search process: join the benchmark's Ray (a job of its own, with the same code)."""
    _ray_init(address=address)


_TABLES: dict = {}  # a search process's tables, loaded once: name -> (table, grace, rf)


def _one(set_name: str, method: str, seed: int, args: argparse.Namespace) -> tuple[list, float]:
    """One search in a search process (tables loaded on first use)."""
    if set_name not in _TABLES:
        _TABLES.update(load_sets([set_name], quiet=True))
    table, grace, rf = _TABLES[set_name]
    return search(method, table, grace, rf, seed=seed, args=args)


def run_all(sets: dict, args: argparse.Namespace, address: str) -> tuple[dict, dict]:
    """Every (set, seed, method) search, ``args.jobs`` at once; (set -> method -> curves, method -> timings)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    keys = [(name, seed, method) for name in sets for seed in range(args.seeds) for method in args.methods]
    pool = ProcessPoolExecutor(args.jobs, multiprocessing.get_context("spawn"), initializer=_join, initargs=(address,))
    with pool:
        futures = {key: pool.submit(_one, key[0], key[2], key[1], args) for key in keys}
        done: dict = {}
        for name, seed, method in keys:  # in order, so progress lines come per set and seed
            done[name, seed, method] = futures[name, seed, method].result()
            if method == args.methods[-1]:
                cells = [
                    f"{m} {done[name, seed, m][1]:.1f} s/{len(done[name, seed, m][0])} epochs" for m in args.methods
                ]
                print(f"{name} seed {seed}: " + ", ".join(cells), flush=True)
    runs = {name: {m: [] for m in args.methods} for name in sets}
    timing: dict = {}
    for (name, _, method), (values, seconds) in done.items():
        runs[name][method].append(best_so_far(values, sets[name][0].mode))
        timing.setdefault(method, []).append((seconds, len(values)))
    return runs, timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one LCBench task, 2 seeds, 6 trials")
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--trials", type=int, default=8, help="random's trials (B = trials x epochs)")
    parser.add_argument("--sets", nargs="+", help="curve sets (file stems in benchmarks/curves) [all]")
    parser.add_argument("--methods", nargs="+", default=[*PLATFORM, *EXTRA], help="methods [all]")
    parser.add_argument("--concurrent", type=int, default=2, help="trials at once in a search")
    parser.add_argument("--jobs", type=int, default=3, help="searches at once, each in a process of its own")
    parser.add_argument("--seconds-per-epoch", type=float, default=0.0)
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.trials, args.sets = 2, 6, args.sets or ["lcbench-3945"]
    if "bohb" in args.methods and not bohb_available():
        print("bohb skipped: hpbandster and ConfigSpace are not installed (pip install hpbandster ConfigSpace)")
        args.methods.remove("bohb")
    sets = load_sets(args.sets)
    address = start_ray(args.jobs)
    OUT.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs, timing = run_all(sets, args, address)
    wall = time.perf_counter() - start
    results = {}
    for name, (table, _, _) in sets.items():
        summary = summarise(name, table, runs[name], args.seeds, args.trials)
        results[name] = {
            "budget": args.trials * table.epochs,
            "optimum": table.best(),
            "sign": 1 if table.mode == "max" else -1,
            "curves": {m: [c.tolist() for c in cs] for m, cs in runs[name].items()},
            "summary": summary,
        }
    import ray

    ray.shutdown()
    total = sum(s for t in timing.values() for s, _ in t)
    print(f"\nRay Tune per search (mean wall s, replayed epochs per s; {args.jobs} at once), {load()}:")
    for method, t in timing.items():
        seconds, epochs = np.array(t).T
        print(f"  {method:12s} {seconds.mean():.1f} s, {epochs.sum() / seconds.sum():.0f} epochs/s")
    # A quick try, or a run of some sets, does not overwrite a full run's report.
    tag = "-quick" if args.quick else "".join(f"-{name}" for name in sorted(sets)) if args.sets else ""
    (OUT / f"results{tag}.json").write_text(json.dumps({"args": vars(args), "results": results, "timing": timing}))
    plot(results, OUT / f"regret{tag}.png")
    searches = sum(len(t) for t in timing.values())
    print(f"{searches} searches in {wall:.0f} s wall ({total:.0f} s summed over searches); ", end="")
    print(f"{OUT / f'results{tag}.json'}, {OUT / f'regret{tag}.png'}")
    for name, res in results.items():
        if "asha_tpe" in res["summary"]:
            v, lo, hi = res["summary"]["asha_tpe"]["share"]
            never = res["summary"]["asha_tpe"]["never"][0]
            print(
                f"RATIO {name}: asha_tpe reaches random's best in {v:.2f} [{lo:.2f}, {hi:.2f}] of its compute "
                f"(median over {args.seeds} seeds; never on {never:.0%}; target <= 0.33)"
            )


if __name__ == "__main__":
    main()
