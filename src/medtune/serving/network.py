"""A logged model's network file (``torch.export``), loaded with weights only: no stored Python runs.

Used by the pyfunc (``medtune.serving.model``) and by the masked tasks' segmenter (``medtune.serving.segmenter``).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


class NetworkError(ValueError):
    """A network file that does not load with weights only, as one line."""


@contextmanager
def weights_only() -> Iterator[None]:
    """Every ``torch.load`` inside runs with ``weights_only=True``.

    ``torch.export.load`` unpickles pickled weights, constants and old-format archives with
    ``weights_only=False`` (after a failed safe load, too): a crafted archive would run its code.
    ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` is torch's own switch that overrides those calls.
    """
    saved = {
        key: os.environ.pop(key, None) for key in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    }
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value


def load_network(file: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The exported network in ``file`` on ``device``, loaded with weights only (:class:`NetworkError` if it cannot)."""
    try:
        with weights_only():
            program = torch.export.load(str(file))
    except pickle.UnpicklingError:  # torch's message is a paragraph on how to load it unsafely
        raise NetworkError(f"{Path(file).name}: holds pickled objects: refused, it loads with weights only") from None
    except Exception as err:  # noqa: BLE001 - format and graph errors: all "not a plain network"
        why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise NetworkError(
            f"{Path(file).name}: not a torch.export network that loads with weights only ({why[:200]})"
        ) from None
    if torch.device(device).type != "cpu":
        program = torch.export.passes.move_to_device_pass(program, torch.device(device))
    return program.module()
