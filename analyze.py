"""Report on a search from MLflow alone (``medtune.report.cli``): leaderboard, plots, comparisons.

    python analyze.py --experiment whole_cls
    python analyze.py --compare whole_cls masked_cls

The same as ``medtune analyze ...`` once the package is installed.
"""

import sys

from medtune.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
