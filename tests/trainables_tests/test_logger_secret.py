"""The trial logger Ray pickles into ``tuner.pkl`` holds the tracking URI without its password."""

from __future__ import annotations

import pickle

import ray.cloudpickle

from trainables import mlflow_trials
from trainables.mlflow_trials import MLflowTrials, use_tracking_uri

SECRET = "pickle-secret-51c2"
URI = f"http://medtune:{SECRET}@127.0.0.1:5000"


def logger() -> MLflowTrials:
    return MLflowTrials(tracking_uri=URI, experiment_id="1", parent_run_id="p", max_epochs=2, searched=[])


def test_pickled_logger_has_no_password_and_writes_with_the_drivers_uri() -> None:
    saved = ray.cloudpickle.dumps(logger())  # what Tuner writes to tuner.pkl
    # No password in the bytes Ray stores under the storage path.
    assert SECRET.encode() not in saved
    mlflow_trials._FULL_URIS.clear()  # a new process: --resume unpickles the logger
    restored = pickle.loads(saved)
    assert restored.tracking_uri == "http://127.0.0.1:5000"
    use_tracking_uri(URI)  # the resuming driver's own --tracking-uri
    # The restored logger writes with the full URI, password included.
    assert restored.writes.tracking_uri == URI
