"""Training engine for the feature-extraction strategy: a logistic head on frozen-encoder features
(numpy/scikit-learn/torch/transformers only, so it runs where MLflow, Prefect and DVC don't).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.special import softmax
from sklearn.linear_model import LogisticRegression

from tuneline.config import TrainConfig

log = logging.getLogger(__name__)

HEAD_FILE = "head.safetensors"


def all_label_weights(clf, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight [n_classes, features], bias) of a fitted LogisticRegression over every label id."""
    weight = np.zeros((n_classes, clf.coef_.shape[1]))
    bias = np.full(n_classes, -1e4)  # a class absent from training is never predicted
    if clf.coef_.shape[0] == 1:  # binary: one logit; softmax over [0, z] gives the same probabilities
        bias[clf.classes_[0]] = 0.0
        weight[clf.classes_[1]], bias[clf.classes_[1]] = clf.coef_[0], clf.intercept_[0]
    else:
        weight[clf.classes_], bias[clf.classes_] = clf.coef_, clf.intercept_
    return weight, bias


class LinearHead:
    """softmax(x W^T + b): a multinomial logistic regression stored as plain tensors."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        self.weight = weight.astype(np.float32)
        self.bias = bias.astype(np.float32)

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, n_classes: int, cfg: TrainConfig) -> "LinearHead":
        clf = LogisticRegression(C=cfg.head_c, max_iter=cfg.head_max_iter, random_state=cfg.seed,
                                 class_weight="balanced" if cfg.class_weight == "balanced" else None)
        return cls(*all_label_weights(clf.fit(X, y), n_classes))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return softmax(X.astype(np.float64) @ self.weight.T.astype(np.float64) + self.bias.astype(np.float64), axis=1)

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        save_file({"weight": self.weight, "bias": self.bias}, str(path))

    @classmethod
    def load(cls, path: Path) -> "LinearHead":
        from safetensors.numpy import load_file

        t = load_file(str(path))
        return cls(t["weight"], t["bias"])


def save_feature_model(
    model_dir: Path, tokenizer, encoder, head: LinearHead, labels: Sequence[str], train_cfg: TrainConfig, base_model: str
) -> None:
    """The encoder (and tokenizer) in `encoder/` for AutoModel, the head beside it, and a model card:
    no top-level config.json, so transformers refuses the folder rather than invent a head."""
    from tuneline.classification.modelio import ENCODER_DIR, write_meta

    encoder.save_pretrained(Path(model_dir) / ENCODER_DIR, safe_serialization=True)
    tokenizer.save_pretrained(Path(model_dir) / ENCODER_DIR)
    head.save(model_dir / HEAD_FILE)
    write_meta(model_dir, "feature_extraction", labels, train_cfg, base_model)
