#!/usr/bin/env bash
# Set up .venv and run the whole test suite (CPU; about 10 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
export RAY_AUTH_MODE=disabled
exec .venv/bin/python -m pytest "$@"
