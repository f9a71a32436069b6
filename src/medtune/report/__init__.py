"""Reports read from MLflow alone: what ``analyze.py`` prints, draws and writes after a search.

``load`` turns a launch (parent run and its trial runs) into plain values; ``plots`` and
``predictions`` draw them; ``importance`` runs Optuna's fANOVA; ``html`` and ``write`` make the
self-contained page; ``export`` writes the best configuration for ``launch.py --config``;
``compare`` and ``bootstrap`` put the best trials of several experiments side by side. Nothing here
needs Ray or the trial checkpoints, so a report works on a laptop against a remote tracking server.
"""
