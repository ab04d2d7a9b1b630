"""Stratified k-fold cross-validation of the selected candidate, and the refit + test evaluation.

Feature extraction encodes each dataset ONCE (cached on disk); every fold and the refit reuse it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold
from tqdm.auto import tqdm

from tuneline.config import CVConfig, TrainConfig
from tuneline.features import FeatureCache, cache_key, embed
from tuneline.metrics import classification_metrics, majority_rate, per_class_metrics, plot_confusion_matrix, summarize
from tuneline.models import load_encoder
from tuneline.storage import atomic_path, read_json, write_json
from tuneline.training import LinearHead, save_feature_model

log = logging.getLogger(__name__)


class Featurizer:
    """Loads the encoder lazily: on a full cache hit it is never loaded at all."""

    def __init__(self, selection: dict, train_cfg: TrainConfig, cache_dir: Path):
        self.selection, self.cfg = selection, train_cfg
        self.cache = FeatureCache(cache_dir)
        self._loaded = None

    @property
    def loaded(self):
        if self._loaded is None:
            self._loaded = load_encoder(self.selection["resolved"], self.cfg.trust_remote_code, self.cfg.allow_pickle_weights)
        return self._loaded

    def __call__(self, texts: list[str], desc: str) -> np.ndarray:
        key = cache_key(self.selection["fingerprint"], texts, self.cfg.max_length, self.cfg.pooling)

        def compute() -> np.ndarray:
            tokenizer, encoder = self.loaded
            return embed(texts, tokenizer, encoder, max_length=self.cfg.max_length, batch_size=self.cfg.batch_size, pooling=self.cfg.pooling, desc=desc)

        return self.cache.get(key, compute)


def make_folds(y: np.ndarray, cfg: CVConfig) -> list[dict[str, list[int]]]:
    min_class = int(np.bincount(y).min())
    if min_class < cfg.k:
        raise ValueError(f"cv.k={cfg.k} but the smallest class has only {min_class} training rows; lower cv.k")
    skf = StratifiedKFold(n_splits=cfg.k, shuffle=True, random_state=cfg.seed)
    return [{"train": tr.tolist(), "val": va.tolist()} for tr, va in skf.split(np.zeros(len(y)), y)]


def crossval(cv_cfg: CVConfig, train_cfg: TrainConfig, processed_dir: Path, selection_path: Path, cache_dir: Path, cv_dir: Path) -> dict:
    """Step: k folds, a head trained per fold on cached features; write folds, per-fold metrics, summary."""
    selection = read_json(selection_path)
    train = pd.read_parquet(processed_dir / "train.parquet")
    y = train["label_id"].to_numpy()
    n_classes = len(read_json(processed_dir / "label_map.json"))
    folds = make_folds(y, cv_cfg)
    featurize = Featurizer(selection, train_cfg, cache_dir)
    X = featurize(train["text"].tolist(), "embedding train")
    fold_metrics = []
    for i, fold in enumerate(tqdm(folds, desc="cross-validation", unit="fold", leave=False)):
        tr, va = np.array(fold["train"]), np.array(fold["val"])
        head = LinearHead.fit(X[tr], y[tr], n_classes, train_cfg)
        m = classification_metrics(y[va], head.predict_proba(X[va]))
        m["majority_rate"] = majority_rate(y[va])
        fold_metrics.append(m)
        log.info("fold %d/%d: %s", i + 1, len(folds), {k: round(v, 4) for k, v in m.items()})
    summary = {
        "k": cv_cfg.k,
        "model": selection["model"],
        "strategy": selection["strategy"],
        "metrics": summarize([{k: v for k, v in m.items() if k != "majority_rate"} for m in fold_metrics]),
        "encoder_passes": featurize.cache.encoder_passes,
    }
    with atomic_path(cv_dir) as tmp:
        tmp.mkdir()
        write_json(tmp / "folds.json", {"seed": cv_cfg.seed, "k": cv_cfg.k, "folds": folds})
        write_json(tmp / "fold_metrics.json", fold_metrics)
        write_json(tmp / "summary.json", summary)
    return summary


def refit_and_test(train_cfg: TrainConfig, processed_dir: Path, selection_path: Path, cache_dir: Path, model_dir: Path, eval_dir: Path) -> dict:
    """Step: fit on all training rows, save the model folder, evaluate once on the test split."""
    selection = read_json(selection_path)
    train = pd.read_parquet(processed_dir / "train.parquet")
    test = pd.read_parquet(processed_dir / "test.parquet")
    label_map = read_json(processed_dir / "label_map.json")
    names = sorted(label_map, key=label_map.get)
    featurize = Featurizer(selection, train_cfg, cache_dir)
    X_train = featurize(train["text"].tolist(), "embedding train")
    X_test = featurize(test["text"].tolist(), "embedding test")
    y_train, y_test = train["label_id"].to_numpy(), test["label_id"].to_numpy()
    head = LinearHead.fit(X_train, y_train, len(names), train_cfg)
    proba = head.predict_proba(X_test)
    metrics = classification_metrics(y_test, proba)
    metrics["majority_rate"] = majority_rate(y_test)
    y_pred = proba.argmax(1)
    tokenizer, encoder = featurize.loaded
    with atomic_path(model_dir) as tmp:
        tmp.mkdir()
        save_feature_model(tmp, tokenizer, encoder, head, names, train_cfg, selection["model"])
    with atomic_path(eval_dir) as tmp:
        tmp.mkdir()
        write_json(tmp / "metrics.json", {f"test_{k}": v for k, v in metrics.items()})
        write_json(tmp / "per_class.json", per_class_metrics(y_test, y_pred, names))
        plot_confusion_matrix(y_test, y_pred, names, tmp / "confusion_matrix.png", f"test split ({len(y_test)} rows)")
        pd.DataFrame(
            {"text": test["text"], "label": test["label"], "predicted": [names[i] for i in y_pred]}
            | {f"p_{n}": proba[:, i] for i, n in enumerate(names)}
        ).to_parquet(tmp / "predictions.parquet", index=False)
    log.info("test: %s", {k: round(v, 4) for k, v in metrics.items()})
    return metrics
