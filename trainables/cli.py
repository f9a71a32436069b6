"""The ``medtune`` command: ``medtune launch|analyze|predict|data ...`` (installed by the package).

Each subcommand is the matching script of the checkout (``launch.py``, ``analyze.py``, ``predict.py``,
``python -m medtune.data``) with the same flags; ``medtune launch -h`` lists them.
"""

from __future__ import annotations

import sys


def _launch() -> int:
    from trainables.launch import cli

    cli()  # exits with the launch's code
    return 0


def _analyze() -> int:
    from medtune.report.cli import main

    return main()


def _predict() -> int:
    from medtune.serving.predict import main

    return main()


def _data() -> int:
    from medtune.data.__main__ import main

    return main()


COMMANDS = {"launch": _launch, "analyze": _analyze, "predict": _predict, "data": _data}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: medtune {{{','.join(COMMANDS)}}} ... (medtune <command> -h for its flags)", file=sys.stderr)
        sys.exit(2)
    command = sys.argv.pop(1)
    sys.argv[0] = f"medtune {command}"
    sys.exit(COMMANDS[command]())
