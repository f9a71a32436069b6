#!/usr/bin/env bash
# The demo: set up .venv, generate the embedded synthetic dataset, search segmenters (the best
# becomes the champion) and then classifiers of the images masked by it, while the whole-image
# baseline searches beside them on the same store; then the masked search's report and the
# comparison. Timing: see README.md ("Two commands"). Afterwards `mlflow ui` in this folder shows every trial.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
export PYTHONWARNINGS=ignore  # each launch starts its Ray cluster on loopback, with a token of its own
PY=.venv/bin/python
[ -f data/synthetic/train.json ] || $PY -m medtune.data synth --out data/synthetic
# A shorter budget than the shipped spaces' (8 epochs, ASHA keeping the best half): at most 6
# epochs, ASHA keeping the best third after 2. Each winner is still retrained with 3 seeds.
DEMO=(--set budget.max_epochs=6 --set budget.reduction_factor=3)
mkdir -p logs
# whole_cls needs no segmenter: it runs beside the other two (two launches on one store), its
# terminal output kept in logs/whole_cls.log and printed when it ends.
$PY launch.py --space whole_cls "${DEMO[@]}" "$@" > logs/whole_cls.log 2>&1 &
whole=$!
trap 'kill "$whole" 2>/dev/null || true' EXIT  # the demo stopped early: do not leave it running
$PY launch.py --space segmentation "${DEMO[@]}" "$@"
$PY launch.py --space masked_cls "${DEMO[@]}" "$@"
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
