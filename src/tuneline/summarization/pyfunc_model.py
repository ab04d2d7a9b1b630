"""MLflow "models from code" entry for summarizers: MLflow executes this file when loading a version."""
import mlflow

from tuneline.summarization.pyfunc import SummarizerModel

mlflow.models.set_model(SummarizerModel())
