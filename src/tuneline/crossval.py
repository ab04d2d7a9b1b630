"""Cross-validation of every candidate on the SAME stratified folds, the choice of the winner,
and the winner's refit on all training rows with one evaluation on the untouched test split.

Feature extraction encodes each dataset ONCE (cached on disk); every fold and the refit reuse it.
"""
from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split
from tqdm.auto import tqdm

from tuneline import resume
from tuneline.config import CVConfig, SelectConfig, TrainConfig
from tuneline.features import FeatureCache, cache_key, embed
from tuneline.metrics import (classification_metrics, classification_report, majority_rate, per_class_metrics,
                              plot_confusion_matrix, summarize)
from tuneline.models import load_encoder
from tuneline.storage import atomic_path, read_json, write_json
from tuneline.training import LinearHead, save_feature_model

log = logging.getLogger(__name__)


class Featurizer:
    """Loads the encoder lazily: on a full cache hit it is never loaded at all."""

    def __init__(self, candidate: dict, train_cfg: TrainConfig, cache_dir: Path):
        self.candidate, self.cfg = candidate, train_cfg
        self.cache = FeatureCache(cache_dir)
        self._loaded = None

    @property
    def loaded(self):
        if self._loaded is None:
            self._loaded = load_encoder(self.candidate["resolved"], self.cfg.trust_remote_code, self.cfg.allow_pickle_weights)
        return self._loaded

    def __call__(self, texts: list[str], desc: str) -> np.ndarray:
        key = cache_key(self.candidate["fingerprint"], texts, self.cfg.max_length, self.cfg.pooling)

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


def _baseline(cfg: TrainConfig, seed: int):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
        LogisticRegression(max_iter=2000, class_weight="balanced" if cfg.class_weight == "balanced" else None, random_state=seed),
    )


def _finetune(candidate: dict, texts: list[str], y: np.ndarray, names: list[str], cfg: TrainConfig, seed: int, desc: str,
              checkpoint_dir: Path | None = None):
    """Fine-tune a fresh copy of the candidate; early stopping carves its own validation rows.
    With `checkpoint_dir`, checkpoints go there and an interrupted run continues from them."""
    from tuneline.finetune import build_model, train_model

    cfg = cfg.model_copy(update={"seed": seed})
    model, tokenizer = build_model(candidate["resolved"], names, cfg, candidate["strategy"])
    val = None
    if cfg.early_stopping_patience is not None:
        idx_tr, idx_va = train_test_split(np.arange(len(y)), test_size=cfg.validation_fraction, stratify=y, random_state=seed)
        val = ([texts[i] for i in idx_va], y[idx_va])
        texts, y = [texts[i] for i in idx_tr], y[idx_tr]
    return train_model(model, tokenizer, texts, y, cfg, val=val, desc=desc, checkpoint_dir=checkpoint_dir)


def fold_jobs(candidates: list[dict], folds: list[dict], cv_cfg: CVConfig) -> list[dict]:
    """One job per (candidate, fold): small, picklable, independent — they may run in any order,
    on threads or Dask workers, and give the same numbers."""
    return [{"candidate": c, "fold": i, "seed": cv_cfg.seed + i} for c in candidates for i in range(len(folds))]


def run_fold_job(job: dict, folds: list[dict], cfg: TrainConfig, processed_dir: Path, cache_dir: Path) -> dict:
    """Score one candidate on one fold; returns its validation metrics and prediction timing."""
    from tuneline.finetune import predict_proba

    candidate, i, seed = job["candidate"], job["fold"], job["seed"]
    train = pd.read_parquet(Path(processed_dir) / "train.parquet")
    label_map = read_json(Path(processed_dir) / "label_map.json")
    names = sorted(label_map, key=label_map.get)
    texts, y = train["text"].tolist(), train["label_id"].to_numpy()
    tr, va = np.array(folds[i]["train"]), np.array(folds[i]["val"])
    strategy, predict_s, work = candidate["strategy"], 0.0, None
    if strategy == "feature_extraction":
        X = Featurizer(candidate, cfg, Path(cache_dir))(texts, f"embedding train ({candidate['name']})")  # a cache hit
        proba = LinearHead.fit(X[tr], y[tr], len(names), cfg.model_copy(update={"seed": seed})).predict_proba(X[va])
    elif strategy == "baseline":
        model = _baseline(cfg, seed).fit([texts[j] for j in tr], y[tr])
        start = time.perf_counter()
        proba = model.predict_proba([texts[j] for j in va])
        predict_s = time.perf_counter() - start
    else:  # a fold that finished before a crash is never trained again; an interrupted one resumes
        work = resume.work_dir(cache_dir, f"fold{i}", candidate, cfg, seed, Path(processed_dir) / "train.parquet", tr)
        if (done := resume.finished(work)) is not None:
            return done
        fit = _finetune(candidate, [texts[j] for j in tr], y[tr], names, cfg, seed, f"{candidate['name']} fold {i + 1}",
                        checkpoint_dir=resume.checkpoint_dir(work))
        start = time.perf_counter()
        proba = predict_proba(fit.model, fit.tokenizer, [texts[j] for j in va], cfg.max_length, cfg.batch_size * 2)
        predict_s = time.perf_counter() - start
    m = classification_metrics(y[va], proba)
    m["majority_rate"] = majority_rate(y[va])
    log.info("%s fold %d/%d: %s", candidate["name"], i + 1, len(folds), {k: round(v, 4) for k, v in m.items()})
    result = {"name": candidate["name"], "fold": i, "metrics": m, "predict_s": predict_s, "rows": len(va)}
    if work is not None:
        resume.save_result(work, result)
    return result


def sequential(run, jobs: list[dict]) -> list[dict]:
    return [run(job) for job in tqdm(jobs, desc="cross-validation", unit="fold", leave=False)]


def choose(rows: list[dict], metric: str) -> dict:
    """Highest CV mean of `metric` among eligible candidates; means equal to 4 decimals are a tie,
    broken by fewer parameters, then lower latency."""
    eligible = [r for r in rows if r["eligible"]]
    return min(eligible, key=lambda r: (-round(r["metrics"][metric]["mean"], 4), r["parameters"] or 0, r["latency_ms"]))


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def crossval(cv_cfg: CVConfig, train_cfg: TrainConfig, select_cfg: SelectConfig, processed_dir: Path,
             selection_path: Path, cache_dir: Path, cv_dir: Path, map_jobs=sequential) -> dict:
    """Step: score every candidate on identical folds, pick the winner, write the comparison.

    `map_jobs(run, jobs)` runs the fold jobs (sequentially by default; the Prefect task maps them
    over its task runner); results are ordered by job, so any schedule gives the same output."""
    from functools import partial

    candidates = read_json(selection_path)["candidates"]
    train = pd.read_parquet(processed_dir / "train.parquet")
    texts, y = train["text"].tolist(), train["label_id"].to_numpy()
    folds = make_folds(y, cv_cfg)
    passes = {}
    for cand in candidates:  # encode once per candidate, before any fold job reads the cache
        if cand["strategy"] == "feature_extraction":
            featurize = Featurizer(cand, train_cfg, cache_dir)
            featurize(texts, f"embedding train ({cand['name']})")
            passes[cand["name"]] = featurize.cache.encoder_passes
    jobs = fold_jobs(candidates, folds, cv_cfg)
    results = map_jobs(partial(run_fold_job, folds=folds, cfg=train_cfg, processed_dir=processed_dir, cache_dir=cache_dir), jobs)
    results = sorted(results, key=lambda r: ([c["name"] for c in candidates].index(r["name"]), r["fold"]))
    rows, per_candidate = [], {}
    for cand in candidates:
        mine = [r for r in results if r["name"] == cand["name"]]
        fold_metrics = [r["metrics"] for r in mine]
        per_candidate[cand["name"]] = fold_metrics
        if cand["strategy"] == "feature_extraction":
            key = cache_key(cand["fingerprint"], texts, train_cfg.max_length, train_cfg.pooling)
            latency = 1000.0 * FeatureCache(cache_dir).seconds_per_text(key)
        else:
            latency = 1000.0 * sum(r["predict_s"] for r in mine) / max(sum(r["rows"] for r in mine), 1)
        rows.append({**cand, "latency_ms": latency, "encoder_passes": passes.get(cand["name"], 0),
                     "metrics": summarize([{k: v for k, v in m.items() if k != "majority_rate"} for m in fold_metrics])})
    winner = choose(rows, select_cfg.metric)
    baseline = next((r for r in rows if r["strategy"] == "baseline"), None)
    beats_baseline = baseline is None or winner["metrics"][select_cfg.metric]["mean"] > baseline["metrics"][select_cfg.metric]["mean"]
    if not beats_baseline:
        log.warning("the selected candidate %s does not beat the TF-IDF baseline on %s", winner["name"], select_cfg.metric)
    summary = {"k": cv_cfg.k, "model": winner["model"], "strategy": winner["strategy"], "winner": winner,
               "metrics": winner["metrics"], "rule": f"max CV mean {select_cfg.metric}; ties (4 d.p.) -> fewer parameters, lower latency",
               "beats_baseline": beats_baseline}
    with atomic_path(cv_dir) as tmp:
        tmp.mkdir()
        write_json(tmp / "folds.json", {"seed": cv_cfg.seed, "k": cv_cfg.k, "folds": folds})
        for name, fm in per_candidate.items():
            write_json(tmp / "candidates" / slug(name) / "fold_metrics.json", fm)
        write_json(tmp / "fold_metrics.json", per_candidate[winner["name"]])
        write_json(tmp / "comparison.json", {"metric": select_cfg.metric, "winner": winner["name"], "rule": summary["rule"], "rows": rows})
        (tmp / "comparison.md").write_text(comparison_markdown(rows, select_cfg.metric, winner["name"]), encoding="utf-8")
        write_json(tmp / "summary.json", summary)
    return summary


def comparison_markdown(rows: list[dict], metric: str, winner: str) -> str:
    cols = ["accuracy", "f1_macro", "loss"]
    lines = ["| candidate | " + " | ".join(f"{c} (mean ± std)" for c in cols) + " | parameters | ms/text | |",
             "|---" * (len(cols) + 4) + "|"]
    for r in rows:
        cells = [f"{r['metrics'][c]['mean']:.4f} ± {r['metrics'][c]['std']:.4f}" for c in cols]
        mark = "**winner**" if r["name"] == winner else ("baseline" if not r["eligible"] else "")
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {r['parameters'] or '-'} | {r['latency_ms']:.2f} | {mark} |")
    return f"Candidates scored on identical folds; choice by CV mean {metric}.\n\n" + "\n".join(lines) + "\n"


def refit_and_test(train_cfg: TrainConfig, processed_dir: Path, cv_dir: Path, cache_dir: Path, model_dir: Path, eval_dir: Path) -> dict:
    """Step: fit the winner on all training rows, save the model folder, evaluate once on test."""
    from tuneline.finetune import predict_proba
    from tuneline.metrics import plot_learning_curves
    from tuneline.modelio import save_finetuned

    winner = read_json(cv_dir / "summary.json")["winner"]
    train = pd.read_parquet(processed_dir / "train.parquet")
    test = pd.read_parquet(processed_dir / "test.parquet")
    label_map = read_json(processed_dir / "label_map.json")
    names = sorted(label_map, key=label_map.get)
    y_train, y_test = train["label_id"].to_numpy(), test["label_id"].to_numpy()
    history = []
    with atomic_path(model_dir) as tmp_model:
        tmp_model.mkdir()
        if winner["strategy"] == "feature_extraction":
            featurize = Featurizer(winner, train_cfg, cache_dir)
            X_train = featurize(train["text"].tolist(), "embedding train")
            X_test = featurize(test["text"].tolist(), "embedding test")
            head = LinearHead.fit(X_train, y_train, len(names), train_cfg)
            proba = head.predict_proba(X_test)
            tokenizer, encoder = featurize.loaded
            save_feature_model(tmp_model, tokenizer, encoder, head, names, train_cfg, winner["model"])
        else:
            work = resume.work_dir(cache_dir, "refit", winner, train_cfg, train_cfg.seed, processed_dir / "train.parquet")
            fit = _finetune(winner, train["text"].tolist(), y_train, names, train_cfg, train_cfg.seed, "refit",
                            checkpoint_dir=resume.checkpoint_dir(work))
            proba = predict_proba(fit.model, fit.tokenizer, test["text"].tolist(), train_cfg.max_length, train_cfg.batch_size * 2, desc="testing")
            history = fit.history
            save_finetuned(tmp_model, fit.model, fit.tokenizer, names, train_cfg, winner["strategy"], winner["model"])
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
