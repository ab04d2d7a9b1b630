"""MLflow "models from code" entry: MLflow executes this file when loading a registered version."""
import mlflow

from tuneline.pyfunc import TunelineModel

mlflow.models.set_model(TunelineModel())
