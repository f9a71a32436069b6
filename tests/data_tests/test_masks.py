"""``medtune.data.masks``: segmentations too short to draw are empty masks, never a crash."""

from __future__ import annotations

import numpy as np
import pytest

from medtune.data.masks import segmentation_mask


@pytest.mark.parametrize("polygon", [[0.0], [1.0, 2.0], [1.0, 2.0, 3.0], [0.0, 0.0, 3.0, 0.0, 3.0]])
def test_a_polygon_of_fewer_than_three_points_is_skipped(polygon: list[float]) -> None:
    # One coordinate (no y) crashed the far-outside check with "min() arg is an empty sequence".
    assert not segmentation_mask([polygon], 5, 6).any()


def test_a_short_polygon_beside_a_real_one_leaves_the_real_one() -> None:
    square = [1.0, 1.0, 4.0, 1.0, 4.0, 4.0, 1.0, 4.0]
    expected = segmentation_mask([square], 6, 6)
    # The short polygon adds nothing; the square is drawn as it is alone.
    assert expected.any() and np.array_equal(segmentation_mask([[0.0], square], 6, 6), expected)
