#!/usr/bin/env bash
# Mutation testing of one module with mutmut (a dev tool, pinned in requirements-mutation.txt; not in CI).
#
#   bash benchmarks/mutation.sh <module path> <test paths...>
#   bash benchmarks/mutation.sh src/medtune/data/folds.py tests/data_tests/test_folds_mutants.py \
#       tests/data_tests/test_fold_balance.py -k "not launch"
#
# mutmut makes single-point changes to the module (an operator, a constant, a call's argument, ...)
# and runs the tests that reach each changed function; a change no test notices *survives*. The
# arguments after the module are handed to pytest as they are (files, node ids, -k/-m expressions):
# give the module's fast tests only (seconds), never one that runs launch.py, since they run once per
# mutant.
#
# mutmut writes a mutants/ folder in its working folder, so the run happens in a private copy of the
# checkout (MUTATION_DIR, default a fresh /tmp/mutation.XXXXXX), never in the checkout itself: other
# modules can be scored at the same time. The copy is kept; `cd <copy> && <python> -m mutmut show
# <name>` prints a survivor's diff.
#
# Environment:
#   PYTHON               the interpreter with mutmut installed (default: .venv/bin/python of this checkout)
#   MUTATION_DIR         the private copy (default: a new mktemp -d folder); an earlier copy is emptied first
#   MUTATION_CHILDREN    mutants tested at once (default 1: the machine is shared)
#   MUTATION_EQUIVALENT  names of mutants judged equivalent (no test can tell them apart; BENCHMARKS.md
#                        names each and why), space-separated: left out of the score
#
# Prints the count per outcome, each survivor's name, and the score:
#   killed (incl. timeouts) / (all mutants - skipped - equivalent).
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: bash benchmarks/mutation.sh <module path, e.g. src/medtune/data/folds.py> <test paths or pytest args...>" >&2
    exit 2
fi
checkout="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
module="$1"
shift
if [ ! -f "$checkout/$module" ] || [[ "$module" != src/*.py ]]; then
    echo "mutation.sh: $module: expected a Python file under src/ of $checkout" >&2
    exit 2
fi
python="${PYTHON:-$checkout/.venv/bin/python}"
if ! "$python" -c "import mutmut" 2>/dev/null; then
    echo "mutation.sh: $python has no mutmut: $python -m pip install -r requirements-mutation.txt" >&2
    exit 2
fi
work="${MUTATION_DIR:-$(mktemp -d /tmp/mutation.XXXXXX)}"
case "$work" in
    "$checkout" | "$checkout"/*)
        echo "mutation.sh: MUTATION_DIR $work is inside the checkout; give a private folder" >&2
        exit 2
        ;;
esac

# The private copy: the code, tests and configuration, without the venv, caches or earlier mutants.
# A folder this script made before (it holds .mutation-copy) is emptied; any other must be empty.
if [ -n "$(ls -A "$work" 2>/dev/null)" ]; then
    if [ ! -f "$work/.mutation-copy" ]; then
        echo "mutation.sh: MUTATION_DIR $work is not empty and not an earlier copy; give an empty or new folder" >&2
        exit 2
    fi
    rm -rf "$work"
fi
mkdir -p "$work"
tar -C "$checkout" --exclude=./.venv --exclude=./.git --exclude=./.cache --exclude=./mutants --exclude=./mlruns \
    --exclude=./runs --exclude=./data --exclude='./mlflow.db*' --exclude=./benchmarks/out --exclude=__pycache__ \
    -cf - . | tar -C "$work" -xf -
touch "$work/.mutation-copy"

# mutmut's settings, appended to the copy's pyproject.toml (TOML arrays of JSON strings).
"$python" - "$work/pyproject.toml" "$module" "$@" <<'EOF'
import json
import sys

path, module, tests = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(path, "a") as out:
    out.write(
        "\n[tool.mutmut]\n"
        f"only_mutate = [{json.dumps(module)}]\n"
        # the tests import tests.*, trainables and the shipped spaces; pytest.ini sets pythonpath and markers
        'also_copy = ["trainables/", "search_spaces/", "pytest.ini", "launch.py", "analyze.py", "predict.py"]\n'
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]\n'
    )
EOF

cd "$work"
start=$(date +%s)
"$python" -m mutmut run --max-children "${MUTATION_CHILDREN:-1}" >mutmut-run.log 2>&1 || {
    tail -n 30 mutmut-run.log >&2
    echo "mutation.sh: mutmut run failed (log: $work/mutmut-run.log)" >&2
    exit 1
}
"$python" -m mutmut results --all true >mutmut-results.txt

MUTATION_SECONDS=$(($(date +%s) - start)) "$python" - "$module" mutmut-results.txt "$work" <<'EOF'
import os
import sys
from collections import Counter

module, results, work = sys.argv[1:]
equivalent = set(os.environ.get("MUTATION_EQUIVALENT", "").split())
status = {}
for line in open(results):
    name, _, outcome = line.strip().rpartition(": ")
    if name:
        status[name] = outcome
unknown = equivalent - set(status)
if unknown:
    print(f"mutation.sh: MUTATION_EQUIVALENT names no mutant of {module}: {' '.join(sorted(unknown))}", file=sys.stderr)
    sys.exit(2)
counts = Counter(outcome for name, outcome in status.items() if name not in equivalent)
killed = counts["killed"] + counts["timeout"] + counts["caught by type check"]
scored = sum(counts.values()) - counts["skipped"]
survivors = sorted(name for name, outcome in status.items() if name not in equivalent and outcome not in (
    "killed", "timeout", "caught by type check", "skipped"))
for name in survivors:
    print(f"  {status[name]}: {name}")
print(f"{module}: {len(status)} mutants, " + ", ".join(f"{n} {o}" for o, n in sorted(counts.items()))
      + f", {len(equivalent)} equivalent (set aside)")
score = 100.0 * killed / scored if scored else 0.0
print(f"{module}: killed {killed} of {scored} non-equivalent mutants: score {score:.1f}%"
      f" ({os.environ['MUTATION_SECONDS']} s; copy {work}: python -m mutmut show <name> there)")
EOF
