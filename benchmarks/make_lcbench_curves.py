"""Sample YAHPO Gym's LCBench surrogate once into stored curve tables (``benchmarks/curves/lcbench-*.npz``).

    python benchmarks/make_lcbench_curves.py --yahpo-python /tmp/yahpo-venv/bin/python \\
        --yahpo-data /tmp/yahpo_data [--tasks 3945 7593 167190] [--rows 2000] [--seed 0]

LCBench (Zimmer et al. 2021) trained 2,000 MLP configurations for 52 epochs on 35 OpenML tasks;
YAHPO Gym (Pfisterer et al. 2022) fitted one surrogate to those curves (``lcbench/model.onnx`` in
the ``slds-lmu/yahpo_data`` repository). For each task, ``--rows`` configurations are drawn
uniformly from LCBench's space (log scale for batch size, learning rate and units, as LCBench
and YAHPO declare them), the surrogate is evaluated at every epoch 1..52, and the table
(``trainables.replay`` format: ``val_balanced_accuracy`` as ``val/balanced_acc``) is written as
float16. Afterwards a search replays the table with numpy alone.

``yahpo-gym`` pins ``numpy<2`` and ``ConfigSpace<=0.6.1``, which the project's venv cannot hold,
so the surrogate runs in its own interpreter (``--yahpo-python``: a venv with ``pip install
yahpo-gym==1.0.2 onnxruntime``): this script calls itself there with ``--raw`` (numpy and
yahpo-gym only) and saves the result here. Benchmark-only dependencies: not in requirements.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CURVES_DIR = Path(__file__).resolve().parent / "curves"
EPOCHS = 52
TASKS = ("3945", "7593", "167190")  # OpenML task ids of three LCBench data sets
# LCBench's space (yahpo_data lcbench/config_space.json); ints drawn on a log scale are rounded.
PARAMS = {
    "batch_size": {"loguniform": [16, 512]},
    "learning_rate": {"loguniform": [1.0e-4, 1.0e-1]},
    "momentum": {"uniform": [0.1, 0.99]},
    "weight_decay": {"uniform": [1.0e-5, 1.0e-1]},
    "num_layers": {"int": [1, 5]},
    "max_units": {"loguniform": [64, 1024]},
    "max_dropout": {"uniform": [0.0, 1.0]},
}
ROUNDED = ("batch_size", "max_units")  # integers in LCBench, log-uniform in its space
SOURCE = (
    "YAHPO Gym 1.0.2 LCBench surrogate (slds-lmu/yahpo_data lcbench/model.onnx, Apache-2.0), "
    "on LCBench data (Zimmer et al. 2021, Apache-2.0)"
)


def sample(rng: np.random.Generator, rows: int) -> dict[str, np.ndarray]:
    """``rows`` configurations drawn uniformly from ``PARAMS`` (log scale where loguniform)."""
    columns = {}
    for key, spec in PARAMS.items():
        kind, (low, high) = next(iter(spec.items()))
        if kind == "loguniform":
            values = np.exp(rng.uniform(np.log(low), np.log(high), rows))
        elif kind == "int":
            values = rng.integers(low, high + 1, rows).astype(np.float64)
        else:
            values = rng.uniform(low, high, rows)
        columns[key] = np.round(values) if key in ROUNDED else values
    return columns


def evaluate(task: str, columns: dict[str, np.ndarray]) -> np.ndarray:
    """Rows x epochs of the surrogate's val balanced accuracy (run in the yahpo-gym interpreter)."""
    from yahpo_gym import BenchmarkSet  # noqa: PLC0415 - only in the --raw interpreter

    bench = BenchmarkSet("lcbench", instance=task, check=False, multithread=False)
    rows = len(next(iter(columns.values())))
    curves = np.empty((rows, EPOCHS), dtype=np.float32)
    for i in range(rows):
        config = {
            key: (int(v[i]) if key in ROUNDED or key == "num_layers" else float(v[i])) for key, v in columns.items()
        }
        batch = [{**config, "OpenML_task_id": task, "epoch": epoch} for epoch in range(1, EPOCHS + 1)]
        curves[i] = [out["val_balanced_accuracy"] for out in bench.objective_function(batch)]
    return curves


def raw(out: Path, tasks: list[str], rows: int, seed: int, data: Path) -> None:
    """``--raw``: in the yahpo-gym interpreter, write each task's configurations and curves to ``out``."""
    settings = Path(tempfile.mkdtemp(prefix="yahpo-config-")) / "settings"
    settings.write_text(json.dumps({"data_path": str(data)}))  # JSON is YAML: no ~/.config file written
    os.environ["YAHPO_LOCAL_CONFIG"] = str(settings)
    arrays = {}
    for task in tasks:
        columns = sample(np.random.default_rng([seed, int(task)]), rows)
        arrays[f"{task}/curves"] = evaluate(task, columns)
        arrays.update({f"{task}/{key}": values for key, values in columns.items()})
    np.savez(out, **arrays)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--yahpo-python", type=Path, help="python of a venv with yahpo-gym and onnxruntime")
    parser.add_argument("--yahpo-data", type=Path, required=True, help="folder holding yahpo_data's lcbench/")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), help="LCBench OpenML task ids")
    parser.add_argument("--rows", type=int, default=2000, help="configurations per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--raw", type=Path, help=argparse.SUPPRESS)  # internal: the yahpo-gym side
    args = parser.parse_args()
    if args.raw:
        raw(args.raw, args.tasks, args.rows, args.seed, args.yahpo_data.resolve())
        return
    if not (args.yahpo_data / "lcbench" / "model.onnx").is_file():
        sys.exit(f"{args.yahpo_data}: no lcbench/model.onnx (a copy of slds-lmu/yahpo_data is expected)")
    if args.yahpo_python is None or not args.yahpo_python.is_file():
        sys.exit("--yahpo-python: expected the python of a venv with `pip install yahpo-gym==1.0.2 onnxruntime`")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "raw.npz"
        command = [str(args.yahpo_python), __file__, "--raw", str(out), "--yahpo-data", str(args.yahpo_data)]
        command += ["--rows", str(args.rows), "--seed", str(args.seed), "--tasks", *args.tasks]
        subprocess.run(command, check=True)
        with np.load(out) as data:
            for task in args.tasks:
                save(task, {key: data[f"{task}/{key}"] for key in PARAMS}, data[f"{task}/curves"], args.seed)
    print(f"{len(args.tasks)} tasks x {args.rows} rows x {EPOCHS} epochs in {time.perf_counter() - start:.0f} s")


def save(task: str, columns: dict[str, np.ndarray], curves: np.ndarray, seed: int) -> None:
    """One task's table, in ``trainables.replay``'s format."""
    sys.path.insert(0, str(CURVES_DIR.parent.parent))
    from trainables.replay import save_table  # noqa: PLC0415 - the project's venv only

    meta = {
        "name": f"lcbench-{task}",
        "metric": "val/balanced_acc",
        "mode": "max",
        "task": "classification",
        "source": f"{SOURCE}; OpenML task {task}; {len(curves)} configurations drawn with seed {seed}",
        "params": PARAMS,
    }
    path = CURVES_DIR / f"lcbench-{task}.npz"
    save_table(path, meta=meta, columns={k: v.astype(np.float32) for k, v in columns.items()}, curves=curves)
    spread = curves.max(axis=1)
    print(
        f"{path.name}: best {spread.max():.4f}, median config's best {np.median(spread):.4f}, {path.stat().st_size} bytes"
    )


if __name__ == "__main__":
    main()
