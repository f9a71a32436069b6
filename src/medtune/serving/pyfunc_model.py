"""The code MLflow stores with every logged medtune model ("models from code": no pickled object).

``mlflow.pyfunc.log_model(python_model=<this file>)`` copies it into the model; loading runs it, and it
names the model class. The class itself is ``medtune.serving.MedtuneModel``.
"""

import mlflow.models

from medtune.serving import MedtuneModel

mlflow.models.set_model(MedtuneModel())
