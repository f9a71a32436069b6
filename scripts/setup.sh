#!/usr/bin/env bash
# Create .venv from requirements.txt (exact pins) constrained by constraints.txt (the full lock).
# Re-running is cheap: it reinstalls only when either file changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.installed-$(cat requirements.txt constraints.txt | sha256sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
  rm -f .venv/.installed-* && touch "$stamp"
fi
