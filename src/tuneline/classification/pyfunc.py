"""The MLflow pyfunc flavour of a tuneline model folder: batch predictions with probabilities."""
from __future__ import annotations

import mlflow.pyfunc
import pandas as pd

from tuneline.tables import input_frame


class TunelineModel(mlflow.pyfunc.PythonModel):
    # predict() validates its own input (DataFrame with `text`, or a list of strings); this tells
    # MLflow not to wrap it with type-hint validation (and not to warn that hints are missing).
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        from tuneline.classification.inference import TextClassifier

        self.classifier = TextClassifier(context.artifacts["model_dir"])

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        frame, column = input_frame(model_input, "text")
        proba = self.classifier.predict_proba(frame[column].astype(str).tolist())
        labels = self.classifier.labels
        out = pd.DataFrame({"label": [labels[i] for i in proba.argmax(1)]})
        for i, name in enumerate(labels):
            out[f"p_{name}"] = proba[:, i]
        return out
