"""The dataset tools behind ``python -m medtune.data``: fix, stats, simplify, import-masks, synth.

They prepare a dataset once, before any launch; the launch's own path (load, check, split, folds,
caches) is in ``medtune.data``.
"""
