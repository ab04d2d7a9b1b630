"""Models-from-code entry of the keyword task that tests/test_plugins.py defines."""
import json
from pathlib import Path

import mlflow


class KeywordModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.words = json.loads((Path(context.artifacts["model_dir"]) / "keywords.json").read_text())

    def predict(self, context, model_input, params=None):
        texts = list(model_input) if not hasattr(model_input, "iloc") else model_input.iloc[:, 0].tolist()
        return [max(sorted(self.words), key=lambda label: len(set(t.split()) & set(self.words[label]))) for t in texts]


mlflow.models.set_model(KeywordModel())
