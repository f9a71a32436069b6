"""Name lookup shared by every registry (models, losses, ...).

Registries are plain dicts of name -> factory, kept in the module that owns the concept. This module
holds the two helpers they share, so an unknown name gives the same error, listing the valid names,
everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def lookup(registry: dict[str, T], kind: str, name: str) -> T:
    """Return ``registry[name]``.

    Args:
        registry: name -> factory (or any value).
        kind: what the registry holds, for the message (e.g. ``"segmentation model"``).
        name: the entry asked for.

    Raises:
        ValueError: ``unknown <kind> '<name>'; valid: a, b, c`` when ``name`` is not registered.
    """
    if name not in registry:
        raise ValueError(f"unknown {kind} '{name}'; valid: {', '.join(sorted(registry))}")
    return registry[name]


def build(registry: dict[str, Callable[..., Any]], kind: str, name: str, **kwargs: Any) -> Any:
    """Look ``name`` up in ``registry`` and call its factory with ``kwargs``.

    Args:
        registry: name -> factory taking keyword-only arguments.
        kind: what the registry holds, for the unknown-name message.
        name: the entry to build.
        **kwargs: passed to the factory (e.g. the ``model.*`` values of a trial's config).

    Raises:
        ValueError: for an unknown name (see ``lookup``).
    """
    return lookup(registry, kind, name)(**kwargs)
