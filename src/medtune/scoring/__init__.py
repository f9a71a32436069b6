"""Scoring: statistics on predictions that publishing and reporting both use (bootstrap intervals).

In: per-image predictions and labels. Out: metrics with 95% intervals. Numpy only: no MLflow.
"""
