"""The TF-IDF + logistic-regression baseline: a real candidate that may win and be registered.

Persisted without pickle: the vocabulary as JSON and the idf, coefficients and intercepts as
safetensors, so a registered baseline loads as safely as a transformer folder (scikit-learn only).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.special import softmax

from tuneline.classification.head import all_label_weights

VOCAB_FILE = "vocabulary.json"
WEIGHTS_FILE = "tfidf_logreg.safetensors"
SETTINGS = {"ngram_range": (1, 2), "min_df": 2, "sublinear_tf": True}


def build(class_weight: str, seed: int):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(TfidfVectorizer(**SETTINGS), LogisticRegression(
        max_iter=2000, class_weight="balanced" if class_weight == "balanced" else None, random_state=seed))


class TfidfClassifier:
    """Probabilities from the stored vocabulary, idf and logistic weights (softmax over all labels)."""

    def __init__(self, vocabulary: dict[str, int], idf: np.ndarray, coef: np.ndarray, intercept: np.ndarray):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(vocabulary=vocabulary, **{k: v for k, v in SETTINGS.items() if k != "min_df"})
        self.vectorizer.idf_ = idf
        self.coef, self.intercept = coef, intercept

    @classmethod
    def from_pipeline(cls, pipe, n_classes: int) -> "TfidfClassifier":
        vec, clf = pipe.steps[0][1], pipe.steps[-1][1]
        return cls({t: int(i) for t, i in vec.vocabulary_.items()}, vec.idf_, *all_label_weights(clf, n_classes))

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return softmax(np.asarray(self.vectorizer.transform(list(texts)) @ self.coef.T + self.intercept), axis=1)

    def save(self, model_dir: Path) -> None:
        from safetensors.numpy import save_file

        model_dir = Path(model_dir)
        (model_dir / VOCAB_FILE).write_text(json.dumps(self.vectorizer.vocabulary_, ensure_ascii=False), encoding="utf-8")
        save_file({"idf": np.asarray(self.vectorizer.idf_, dtype=np.float64), "coef": self.coef.astype(np.float64),
                   "intercept": self.intercept.astype(np.float64)}, str(model_dir / WEIGHTS_FILE))

    @classmethod
    def load(cls, model_dir: Path) -> "TfidfClassifier":
        from safetensors.numpy import load_file

        model_dir = Path(model_dir)
        t = load_file(str(model_dir / WEIGHTS_FILE))
        vocabulary = json.loads((model_dir / VOCAB_FILE).read_text(encoding="utf-8"))
        return cls(vocabulary, t["idf"], t["coef"], t["intercept"])
