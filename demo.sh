#!/usr/bin/env bash
# The demo: set up .venv, generate the embedded synthetic dataset, search segmenters (the best
# becomes the champion), search masked and whole-image classifiers, and print each leaderboard.
# Measured 15.5 minutes on 2 CPU cores after setup (2026-12-03; the target is 10). Afterwards: `mlflow ui` in this folder shows every trial.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
export RAY_AUTH_MODE=disabled PYTHONWARNINGS=ignore
PY=.venv/bin/python
[ -f data/synthetic/train.json ] || $PY -m medtune.data synth --out data/synthetic
for space in segmentation masked_cls whole_cls; do
  $PY launch.py --space "$space" "$@"
done
# Each launch printed its leaderboard; the report (HTML, plots, importance) of the masked search:
$PY analyze.py --experiment masked_cls
$PY analyze.py --compare whole_cls masked_cls || true
echo
echo "Done. Run '.venv/bin/mlflow ui' here and open http://127.0.0.1:5000 to browse every trial."
