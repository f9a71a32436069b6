"""Stage 4, publishing the winner: after the search, once.

In: the finished search (its trial runs in MLflow and Ray's checkpoints). Out: the winner's test
metrics and predictions on the parent run, the logged model, its registry version and model card,
and the champion alias moved when it is better. Imports engine, scoring, serving and tracking;
never ``report`` (a later stage that reads MLflow alone).
"""
