"""Search a space with Optuna (TPE) + ASHA on Ray Tune, logging to MLflow (``trainables.launch``).

    python launch.py --space segmentation      # search segmenters, promote the champion
    python launch.py --space masked_cls        # classify lesions masked by the champion
    python launch.py --space whole_cls --smoke # a tiny run of any space

The same as ``medtune launch ...`` once the package is installed.
"""

from trainables.launch import cli

if __name__ == "__main__":
    cli()
