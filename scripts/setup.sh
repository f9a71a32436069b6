#!/usr/bin/env bash
# Create .venv from requirements.txt (exact pins) constrained by constraints.txt (the full lock), then
# install the medtune package itself (src/medtune, editable). Re-running is cheap: it reinstalls only
# when one of those files changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.installed-$(cat requirements.txt constraints.txt pyproject.toml | sha256sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
  # --no-deps: the pinned set above is the package's environment; --no-build-isolation: build with the
  # venv's own setuptools instead of fetching one.
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
  rm -f .venv/.installed-* && touch "$stamp"
fi
