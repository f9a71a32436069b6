"""A model logged before the stage packages (issue 22) still loads and predicts the same.

``tests/fixtures/model_before_layout`` is a tiny U-Net segmenter exactly as ``log_model`` stored it at
commit 635990b, when the package was flat (``medtune/serving.py``); its ``pyfunc_model.py`` imports
``medtune.serving.MedtuneModel``. ``model_before_layout_expected.npz`` holds what that code predicted
for the stored input example.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medtune.serving.trust import load_pyfunc

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_a_model_logged_by_the_flat_layout_loads_without_trusting_and_predicts_the_same() -> None:
    folder = FIXTURES / "model_before_layout"
    images = np.array(json.loads((folder / "input_example.json").read_text()), dtype=np.uint8)
    # No trust_model_code: its stored code is byte for byte the installed pyfunc_model.py.
    answer = load_pyfunc(str(folder)).predict(images)
    expected = np.load(FIXTURES / "model_before_layout_expected.npz")
    np.testing.assert_array_equal(answer["mask"], expected["mask"])
    np.testing.assert_allclose(answer["probability"], expected["probability"], rtol=0, atol=1e-6)
