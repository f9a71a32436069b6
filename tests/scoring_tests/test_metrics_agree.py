"""The two homes of the classification metrics agree: torchmetrics (logged by the tasks every epoch)
and the numpy functions the bootstrap resamples (``medtune.scoring.bootstrap.METRICS``).

A trial's ``test/balanced_acc`` and the interval drawn around it must be about the same number, so
each metric is held against its torchmetrics twin on random predictions, seeds 0-19.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC, MulticlassF1Score

from medtune.scoring.bootstrap import METRICS

TWINS = {  # the same construction as medtune.tasks.classification
    "acc": lambda k: MulticlassAccuracy(k, average="micro"),
    "balanced_acc": lambda k: MulticlassAccuracy(k, average="macro"),
    "f1_macro": lambda k: MulticlassF1Score(k, average="macro"),
    "auroc": lambda k: MulticlassAUROC(k, average="macro"),
}


def test_every_bootstrap_metric_has_a_torchmetrics_twin() -> None:
    assert set(METRICS) == set(TWINS)


@pytest.mark.parametrize("name", sorted(TWINS))
@pytest.mark.parametrize("seed", range(20))
def test_numpy_metric_equals_torchmetrics_on_random_predictions(name: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    k, n = int(rng.integers(2, 6)), int(rng.integers(20, 200))
    labels = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])  # every class present
    probs = rng.dirichlet(np.ones(k), n).astype(np.float32)
    probs[rng.random(n) < 0.3] = probs[0]  # tied scores, as a saturated model gives
    twin = TWINS[name](k)
    expected = float(twin(torch.from_numpy(probs), torch.from_numpy(labels)))
    assert METRICS[name](labels, probs) == pytest.approx(expected, abs=1e-6)
