#!/usr/bin/env bash
# The demo: set up .venv, generate the embedded synthetic dataset, search segmenters (the best
# becomes the champion) and then classifiers of the images masked by it, while the whole-image
# baseline searches beside them on the same store; then the masked search's report and the
# comparison. Timing: see README.md ("Two commands"). Afterwards `mlflow ui` in this folder shows every trial.
#
#   ./demo.sh                 # dataset data/synthetic (synth seed 0), launches with --seed 0
#   ./demo.sh --seed 2        # or DEMO_SEED=2 ./demo.sh: dataset data/synthetic-2 (synth --seed 2), --seed 2
#   ./demo.sh --num-samples 4 # any other argument goes to the three launches
#
# A seed gives a different dataset and different searches; the same seed repeats them exactly:
# every launch runs one trial at a time (--max-concurrent 1), so ASHA and TPE see the results in
# one order (docs/searching.md, "Same seed, same search"). SKIP_SETUP=1 skips scripts/setup.sh (a
# .venv that is already there).
set -euo pipefail
cd "$(dirname "$0")"
seed=${DEMO_SEED:-}
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seed) [ $# -ge 2 ] || { echo "demo.sh: --seed needs a value" >&2; exit 2; }; seed=$2; shift 2 ;;
    --seed=*) seed=${1#--seed=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
[[ -z "$seed" || "$seed" =~ ^[0-9]+$ ]] || { echo "demo.sh: --seed (or DEMO_SEED) must be a whole number, got '$seed'" >&2; exit 2; }
[ "${SKIP_SETUP:-}" = 1 ] || bash scripts/setup.sh
export PYTHONWARNINGS=ignore  # each launch starts its Ray cluster on loopback, with a token of its own
PY=.venv/bin/python
data=data/synthetic${seed:+-$seed}
[ -f "$data/train.json" ] || $PY -m medtune.data synth --out "$data" --seed "${seed:-0}"
# A shorter budget than the shipped spaces' (8 epochs, ASHA keeping the best half): at most 6
# epochs, ASHA keeping the best third after 2. Each winner is still retrained with 3 seeds.
DEMO=(--data "$data" --seed "${seed:-0}" --max-concurrent 1 --set budget.max_epochs=6 --set budget.reduction_factor=3)
mkdir -p logs
# whole_cls needs no segmenter: it runs beside the other two (two launches on one store), its
# terminal output kept in logs/whole_cls.log and printed when it ends.
$PY launch.py --space whole_cls "${DEMO[@]}" ${args[@]+"${args[@]}"} > logs/whole_cls.log 2>&1 &
whole=$!
trap 'kill "$whole" 2>/dev/null || true' EXIT  # the demo stopped early: do not leave it running
$PY launch.py --space segmentation "${DEMO[@]}" ${args[@]+"${args[@]}"}
$PY launch.py --space masked_cls "${DEMO[@]}" ${args[@]+"${args[@]}"}
status=0
wait "$whole" || status=$?
echo
cat logs/whole_cls.log
[ "$status" -eq 0 ] || { echo "whole_cls failed (exit $status): logs/whole_cls.log" >&2; exit "$status"; }
# Each launch printed its leaderboard; the report (HTML, plots, importance) of the masked search:
$PY analyze.py --experiment masked_cls
$PY analyze.py --compare whole_cls masked_cls || true
echo
echo "Done. Run '.venv/bin/mlflow ui' here and open http://127.0.0.1:5000 to browse every trial."
