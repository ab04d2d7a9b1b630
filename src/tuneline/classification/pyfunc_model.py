"""MLflow "models from code" entry: MLflow executes this file when loading a registered version."""
import mlflow

from tuneline.classification.pyfunc import TunelineModel

mlflow.models.set_model(TunelineModel())
