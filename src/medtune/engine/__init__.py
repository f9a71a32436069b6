"""Stage 3, the engine: building, training and testing one configuration.

In: a configuration (dict of dotted keys) and cached data. Out: a trained task module, its metrics,
predictions and fold ensembles. Used alike by trials (``trainables/``), publishing and serving;
plain torch and Lightning, no Ray, no MLflow writes.
"""
