"""MLflow "models from code" entry for LLM adapters: MLflow executes this file when loading a version."""
import mlflow

from tuneline.llm.pyfunc import ChatAdapterModel

mlflow.models.set_model(ChatAdapterModel())
