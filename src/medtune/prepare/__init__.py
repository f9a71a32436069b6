"""Stage 2, preparation: the launch's inputs, checked and cached before any trial starts.

In: ``LaunchOptions`` and a ``SearchSpace`` (``medtune.config``). Out: ``Prepared`` (the dataset, its
tensor caches, the fold plan, the segmenter a masked task uses and its cached masks) and the launch's
parent run. Imports config, data, tracking and engine (a segmenter's masks); never publish or report.
"""
