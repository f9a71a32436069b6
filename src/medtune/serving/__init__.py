"""Serving: a logged medtune model, checked before it is loaded, and ``predict``.

In: a model URI of the store. Out: predictions for new images. ``MedtuneModel`` is exported here
because every model logged so far stores ``pyfunc_model.py``, which imports it from this path.
"""

from medtune.serving.model import MedtuneModel

__all__ = ["MedtuneModel"]
