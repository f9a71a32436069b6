"""Dataset command line: ``python -m medtune.data <command> --help``.

Each command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
``COMMANDS`` maps the command name to that module (imported lazily, so ``--help`` stays fast).
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("medtune.data.tools.synth", "generate the embedded synthetic dermoscopy-like dataset"),
    "check": ("medtune.data.check", "report every problem in a COCO file and its images"),
    "simplify": ("medtune.data.tools.simplify", "regroup fine labels into coarse classes"),
    "split": ("medtune.data.split", "stratified (optionally grouped) train/val/test split"),
    "stats": ("medtune.data.tools.stats", "class counts, mask coverage and image sizes"),
    "import-masks": ("medtune.data.tools.import_masks", "build a COCO file from images, mask PNGs and a CSV"),
}


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run one command; returns its exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m medtune.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # only the chosen command's module is imported
            importlib.import_module(module_name).add_arguments(command)
    args = parser.parse_args(argv)
    return int(importlib.import_module(COMMANDS[args.command][0]).run(args))


if __name__ == "__main__":
    sys.exit(main())
