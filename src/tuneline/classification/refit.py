"""Refit and test: the cross-validation winner fitted on all training rows, saved as a model
folder, and evaluated once on the untouched test split.

The winner trains exactly as it did in its folds (tuneline.classification.crossval.candidate_config): a `partial`
winner trains on the same frozen-prefix cache (its key covers all training texts, so crossval
already computed it), while the test predictions run the whole saved model, as `predict` will.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from tuneline.classification import baseline
from tuneline.engine import resume
from tuneline.config import TrainConfig
from tuneline.classification.crossval import Featurizer, FrozenPrefix, candidate_config, finetune, training_rows
from tuneline.metrics import (classification_metrics, classification_report, majority_rate, per_class_metrics,
                              plot_confusion_matrix, plot_learning_curves)
from tuneline.storage import atomic_path, read_json, write_json
from tuneline.classification.head import LinearHead, save_feature_model
from tuneline.classification.modelio import save_baseline, save_finetuned

log = logging.getLogger(__name__)


def refit_and_test(train_cfg: TrainConfig, processed_dir: Path, cv_dir: Path, cache_dir: Path, model_dir: Path, eval_dir: Path) -> dict:
    """Step: fit the winner on all training rows, save the model folder, evaluate once on test."""
    from tuneline.engine.trainer import predict_proba

    winner = read_json(cv_dir / "summary.json")["winner"]
    cfg = candidate_config(winner, train_cfg)
    texts, y_train, names = training_rows(processed_dir)
    test = pd.read_parquet(processed_dir / "test.parquet")
    test_texts, y_test = test["text"].tolist(), test["label_id"].to_numpy()
    history = []
    with atomic_path(model_dir) as tmp_model:
        tmp_model.mkdir()
        if winner["strategy"] == "feature_extraction":
            featurize = Featurizer(winner, cfg, cache_dir)
            X_train = featurize(texts, "embedding train")
            X_test = featurize(test_texts, "embedding test")
            head = LinearHead.fit(X_train, y_train, len(names), cfg)
            proba = head.predict_proba(X_test)
            tokenizer, encoder = featurize.loaded
            save_feature_model(tmp_model, tokenizer, encoder, head, names, cfg, winner["model"])
        elif winner["strategy"] == "baseline":
            model = baseline.TfidfClassifier.from_pipeline(baseline.build(cfg.class_weight, cfg.seed).fit(texts, y_train), len(names))
            proba = model.predict_proba(test_texts)
            save_baseline(tmp_model, model, names, cfg)
        else:
            work = resume.work_dir(cache_dir, "refit", winner, cfg, cfg.seed, processed_dir / "train.parquet")
            states = FrozenPrefix(winner, cfg, cache_dir, names)(texts, "frozen prefix") if cfg.prefix_cache else None
            fit = finetune(winner, texts, y_train, names, cfg, cfg.seed, "refit", checkpoint_dir=resume.checkpoint_dir(work),
                           states=states)
            proba = predict_proba(fit.model, fit.tokenizer, test_texts, cfg.max_length, max(cfg.batch_size * 2, 128), desc="testing",
                                  precision=cfg.precision)
            history = fit.history
            save_finetuned(tmp_model, fit.model, fit.tokenizer, names, cfg, winner["strategy"], winner["model"])
            resume.clear(work)
    metrics = classification_metrics(y_test, proba)
    metrics["majority_rate"] = majority_rate(y_test)
    y_pred = proba.argmax(1)
    with atomic_path(eval_dir) as tmp:
        tmp.mkdir()
        write_json(tmp / "metrics.json", {f"test_{k}": v for k, v in metrics.items()})
        write_json(tmp / "per_class.json", per_class_metrics(y_test, y_pred, names))
        (tmp / "classification_report.txt").write_text(classification_report(y_test, y_pred, names), encoding="utf-8")
        write_json(tmp / "history.json", history)
        plot_confusion_matrix(y_test, y_pred, names, tmp / "confusion_matrix.png", f"test split ({len(y_test)} rows)")
        if history:
            plot_learning_curves(history, tmp / "learning_curves.png")
        pd.DataFrame(
            {"text": test["text"], "label": test["label"], "predicted": [names[i] for i in y_pred]}
            | {f"p_{n}": proba[:, i] for i, n in enumerate(names)}
        ).to_parquet(tmp / "predictions.parquet", index=False)
    log.info("test (%s): %s", winner["name"], {k: round(v, 4) for k, v in metrics.items()})
    return metrics
