"""medtune: hyperparameter search for medical-image deep learning (plain torch/Lightning; no Ray)."""

__version__ = "0.1.0"
