#!/usr/bin/env bash
# Set up .venv and run the whole test suite (CPU; about 12 minutes on 2 cores, plus about 4 for a first setup).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
export RAY_AUTH_MODE=disabled
exec .venv/bin/python -m pytest "$@"
