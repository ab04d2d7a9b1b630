"""Cross-validation of every candidate on the SAME stratified folds and the choice of the winner.

Work that does not depend on the fold is done once per dataset and cached on disk: the frozen
encoder's features (feature extraction) and the frozen prefix's hidden states (`partial`); every
fold and the refit (tuneline.classification.refit) reuse them. `auto` strategies and precisions are resolved here,
where the training runs (tuneline.engine.hardware), and the resolved values name the candidates and key
every cache, so results from different hardware never share an entry.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from tuneline.classification import baseline
from tuneline.engine import hardware
from tuneline.engine import prefix
from tuneline.engine import resume
from tuneline.config import CVConfig, SelectConfig, TrainConfig
from tuneline.engine.features import DiskCache, cache_key, embed
from tuneline.metrics import classification_metrics, corrected_ttest, majority_rate, summarize
from tuneline.engine.models import load_encoder
from tuneline.classification.selection import candidate_name
from tuneline.storage import file_md5, read_json, slug
from tuneline.classification.head import LinearHead

log = logging.getLogger(__name__)


class _CachedWork:
    """A candidate's once-per-dataset work on texts, cached on disk; the model (`loaded`) is built lazily,
    so on a full cache hit it is never loaded at all."""

    def __init__(self, candidate: dict, cfg: TrainConfig, cache: DiskCache, what: str):
        self.candidate, self.cfg, self.cache, self.what = candidate, cfg, cache, what

    def key(self, texts: list[str]) -> str:
        return cache_key(self.candidate["fingerprint"], texts, self.cfg.max_length, self.what, self.cfg.precision)

    def seconds_per_text(self, texts: list[str]) -> float:
        return self.cache.seconds_per_text(self.key(texts))


class Featurizer(_CachedWork):
    def __init__(self, candidate: dict, train_cfg: TrainConfig, cache_dir: Path):
        super().__init__(candidate, train_cfg, DiskCache(cache_dir), train_cfg.pooling)

    @functools.cached_property
    def loaded(self):
        return load_encoder(self.candidate["resolved"], self.cfg.trust_remote_code, self.cfg.allow_pickle_weights)

    def __call__(self, texts: list[str], desc: str, states: prefix.PrefixStates | None = None, freeze: int = 0) -> np.ndarray:
        """Features of `texts`; with `states` (their frozen prefix, same model and precision, already
        computed for a `partial` candidate), only the layers above it run."""
        key = self.key(texts)

        def compute() -> np.ndarray:
            tokenizer, encoder = self.loaded
            if states is not None:
                return prefix.pooled(encoder, states, freeze, self.cfg.pooling, self.cfg.precision, desc=desc)
            return embed(texts, tokenizer, encoder, max_length=self.cfg.max_length, batch_size=self.cfg.batch_size,
                         pooling=self.cfg.pooling, precision=self.cfg.precision, desc=desc)

        return self.cache.get(key, compute)


class FrozenPrefix(_CachedWork):
    """The frozen prefix's hidden states of a `partial` candidate's texts; the model is built once for
    both the checks and the computation."""

    def __init__(self, candidate: dict, cfg: TrainConfig, cache_dir: Path, names: list[str]):
        super().__init__(candidate, cfg, prefix.cache(cache_dir), f"prefix{cfg.freeze_layers}")
        self.names = names

    @functools.cached_property
    def loaded(self):
        from tuneline.engine.trainer import build_model

        return build_model(self.candidate["resolved"], self.names, self.cfg, "partial")

    def __call__(self, texts: list[str], desc: str) -> prefix.PrefixStates:
        def make() -> prefix.PrefixStates:
            model, tokenizer = self.loaded
            return prefix.compute(model, tokenizer, texts, self.cfg.max_length, self.cfg.freeze_layers, self.cfg.precision,
                                  desc=desc)

        return self.cache.get(self.key(texts), make)

    def usable(self, texts: list[str]) -> bool:
        """Within train.prefix_cache_max_mb, and the swap reproduces the plain forward on this model."""
        model, tokenizer = self.loaded
        size = prefix.estimated_mb(tokenizer, texts, self.cfg.max_length, model.config.hidden_size, self.cfg.precision)
        if size > self.cfg.prefix_cache_max_mb:
            n, k = model.config.num_hidden_layers, self.cfg.freeze_layers
            log.warning("%s: the frozen-prefix cache would take %.0f MB > train.prefix_cache_max_mb=%d; training plain "
                        "partial instead, which runs all %d layers every step: expect training about 1.6x slower (measured "
                        "for MiniLM with 4 of 6 layers frozen, BENCHMARKS.md), up to %.1fx for deeper frozen stacks",
                        self.candidate["name"], size, self.cfg.prefix_cache_max_mb, n, n / max(n - k, 1))
            return False
        if not prefix.agrees(model, tokenizer, texts, self.cfg.max_length, self.cfg.freeze_layers):
            log.warning("%s: the frozen-prefix cache does not reproduce this architecture's forward; training plain partial",
                        self.candidate["name"])
            return False
        return True


def resolve_candidates(candidates: list[dict], train_cfg: TrainConfig) -> list[dict]:
    """`auto` made concrete for this machine; a strategy listed twice (auto and its result) runs once."""
    out: list[dict] = []
    for cand in candidates:
        if cand["strategy"] != "baseline":
            cfg = hardware.resolve(train_cfg, cand["strategy"])
            cand = {**cand, "name": candidate_name(cand["model"], cfg.strategy), "strategy": cfg.strategy,
                    "requested_strategy": cand["strategy"], "precision": cfg.precision}
        if all(o["name"] != cand["name"] for o in out):
            out.append(cand)
    return out


def candidate_config(candidate: dict, train_cfg: TrainConfig) -> TrainConfig:
    """The training config one candidate runs with (strategy, precision, defaults resolved)."""
    cfg = hardware.resolve(train_cfg, candidate["strategy"] if candidate["strategy"] != "baseline" else "feature_extraction")
    if candidate.get("train"):  # a tuned candidate's hyperparameters (tuneline.pipeline.tune), validated as params.yaml's
        checked = TrainConfig.model_validate(candidate["train"])  # its values checked as params.yaml's would be
        cfg = cfg.model_copy(update={k: getattr(checked, k) for k in candidate["train"]})
    return cfg.model_copy(update={"prefix_cache": bool(candidate.get("prefix_cache", False))}) if cfg.strategy == "partial" else cfg


def training_rows(processed_dir: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """The training texts, their label ids, and the label names in id order."""
    train = pd.read_parquet(Path(processed_dir) / "train.parquet")
    label_map = read_json(Path(processed_dir) / "label_map.json")
    return train["text"].tolist(), train["label_id"].to_numpy(), sorted(label_map, key=label_map.get)


def make_folds(y: np.ndarray, cfg: CVConfig) -> list[dict[str, list[int]]]:
    min_class = int(np.bincount(y).min())
    if min_class < cfg.k:
        raise ValueError(f"cv.k={cfg.k} but the smallest class has only {min_class} training rows; lower cv.k")
    skf = StratifiedKFold(n_splits=cfg.k, shuffle=True, random_state=cfg.seed)
    return [{"train": tr.tolist(), "val": va.tolist()} for tr, va in skf.split(np.zeros(len(y)), y)]


def finetune(candidate: dict, texts: list[str], y: np.ndarray, names: list[str], cfg: TrainConfig, seed: int, desc: str,
             checkpoint_dir: Path | None = None, states: prefix.PrefixStates | None = None):
    """Fine-tune a fresh copy of the candidate; early stopping carves its own validation rows.
    With `checkpoint_dir`, checkpoints go there and an interrupted run continues from them;
    with `states` (the frozen prefix of `texts`), `partial` trains on them."""
    from tuneline.engine.trainer import fit

    cfg = cfg.model_copy(update={"seed": seed})
    val, val_states = None, None
    if cfg.early_stopping_patience is not None:
        idx_tr, idx_va = train_test_split(np.arange(len(y)), test_size=cfg.validation_fraction, stratify=y, random_state=seed)
        val = ([texts[i] for i in idx_va], y[idx_va])
        texts, y = [texts[i] for i in idx_tr], y[idx_tr]
        if states is not None:
            states, val_states = states.take(idx_tr), states.take(idx_va)
    frozen = cfg.freeze_layers if candidate["strategy"] == "partial" else None
    return fit(candidate["resolved"], names, candidate["strategy"], texts, y, cfg, val=val, desc=desc,
               checkpoint_dir=checkpoint_dir, frozen_layers=frozen, states=states, val_states=val_states)


def fold_jobs(candidates: list[dict], folds: list[dict], cv_cfg: CVConfig) -> list[dict]:
    """One job per (candidate, fold): small, picklable, independent — they may run in any order,
    on threads or Dask workers, and give the same numbers."""
    return [{"candidate": c, "fold": i, "seed": cv_cfg.seed + i} for c in candidates for i in range(len(folds))]


def run_fold_job(job: dict, folds: list[dict], cfg: TrainConfig, processed_dir: Path, cache_dir: Path) -> dict:
    """Score one candidate on one fold; returns its validation metrics and prediction timing."""
    from tuneline.engine.trainer import predict_proba

    candidate, i, seed = job["candidate"], job["fold"], job["seed"]
    cfg = candidate_config(candidate, cfg)
    texts, y, names = training_rows(processed_dir)
    tr, va = np.array(folds[i]["train"]), np.array(folds[i]["val"])
    strategy, predict_s, work = candidate["strategy"], 0.0, None
    if strategy == "feature_extraction":
        X = Featurizer(candidate, cfg, Path(cache_dir))(texts, f"embedding train ({candidate['name']})")  # a cache hit
        proba = LinearHead.fit(X[tr], y[tr], len(names), cfg.model_copy(update={"seed": seed})).predict_proba(X[va])
    elif strategy == "baseline":
        model = baseline.build(cfg.class_weight, seed).fit([texts[j] for j in tr], y[tr])
        start = time.perf_counter()
        proba = model.predict_proba([texts[j] for j in va])
        predict_s = time.perf_counter() - start
    else:  # a fold that finished before a crash is never trained again; an interrupted one resumes
        work = resume.work_dir(cache_dir, f"fold{i}", candidate, cfg, seed, Path(processed_dir) / "train.parquet", tr)
        if (done := resume.finished(work)) is not None:
            return done
        states = FrozenPrefix(candidate, cfg, Path(cache_dir), names)(texts, "frozen prefix") if cfg.prefix_cache else None
        fit = finetune(candidate, [texts[j] for j in tr], y[tr], names, cfg, seed, f"{candidate['name']} fold {i + 1}",
                       checkpoint_dir=resume.checkpoint_dir(work), states=None if states is None else states.take(tr))
        start = time.perf_counter()
        proba = predict_proba(fit.model, fit.tokenizer, [texts[j] for j in va], cfg.max_length, max(cfg.batch_size * 2, 128),
                              precision=cfg.precision, states=None if states is None else states.take(va),
                              freeze=cfg.freeze_layers)
        predict_s = time.perf_counter() - start
    m = classification_metrics(y[va], proba) | {"majority_rate": majority_rate(y[va])}
    log.info("%s fold %d/%d: %s", candidate["name"], i + 1, len(folds), {k: round(v, 4) for k, v in m.items()})
    result = {"name": candidate["name"], "fold": i, "metrics": m, "predict_s": predict_s, "rows": len(va), "train_rows": len(tr)}
    if work is not None:
        resume.save_result(work, result)
    return result


def choose(rows: list[dict], metric: str) -> dict:
    """Highest CV mean of `metric` among eligible candidates; means equal to 4 decimals are a tie,
    broken by fewer parameters, then lower latency."""
    eligible = [r for r in rows if r["eligible"]]
    return min(eligible, key=lambda r: (-round(r["metrics"][metric]["mean"], 4), r["parameters"] or 0, r["latency_ms"]))


def plan(cv_cfg: CVConfig, train_cfg: TrainConfig, processed_dir: Path, selection_path: Path, cache_dir: Path) -> dict:
    """Identical folds for every candidate, one job per (candidate, fold), and the work done once per
    dataset before any job reads it: each candidate's features or frozen prefix, encoded once —
    frozen prefixes first, so that features of the same model and precision run only the layers above."""
    candidates = resolve_candidates(read_json(selection_path)["candidates"], train_cfg)
    texts, y, names = training_rows(processed_dir)
    folds = make_folds(y, cv_cfg)
    passes, prefixes, prefix_cost = {}, {}, {}
    for cand in sorted(candidates, key=lambda c: c["strategy"] != "partial"):
        cfg = candidate_config(cand, train_cfg)
        if cand["strategy"] == "feature_extraction":
            featurize = Featurizer(cand, cfg, cache_dir)
            cached = prefixes.get((cand["fingerprint"], cfg.precision))
            featurize(texts, f"embedding train ({cand['name']})", *(cached or ()))
            passes[cand["name"]] = featurize.cache.encoder_passes
        elif cand["strategy"] == "partial" and train_cfg.prefix_cache:
            frozen = FrozenPrefix(cand, cfg, cache_dir, names)
            cand["prefix_cache"] = frozen.cache.path(frozen.key(texts)).is_file() or frozen.usable(texts)
            if cand["prefix_cache"]:
                prefixes[(cand["fingerprint"], cfg.precision)] = (frozen(texts, f"frozen prefix ({cand['name']})"), cfg.freeze_layers)
                prefix_cost[f"{cand['fingerprint']}|{cfg.precision}"] = frozen.seconds_per_text(texts)
                passes[cand["name"]] = frozen.cache.encoder_passes
    return {"folds": folds, "jobs": fold_jobs(candidates, folds, cv_cfg), "meta": {"seed": cv_cfg.seed, "k": cv_cfg.k},
            "candidates": candidates, "passes": passes, "prefix_cost": prefix_cost}


def summarize_candidates(plan: dict, results: list[dict], train_cfg: TrainConfig, select_cfg: SelectConfig,
                         processed_dir: Path, cache_dir: Path) -> tuple[dict, dict]:
    """Each candidate's CV summary, its test against the baseline on the same folds, and the winner;
    with the cv folder's comparison files."""
    candidates = plan["candidates"]
    texts, _, names = training_rows(processed_dir)
    results = sorted(results, key=lambda r: ([c["name"] for c in candidates].index(r["name"]), r["fold"]))
    rows, per_candidate = [], {}
    for cand in candidates:
        mine = [r for r in results if r["name"] == cand["name"]]
        fold_metrics = [r["metrics"] for r in mine]
        per_candidate[cand["name"]] = fold_metrics
        cfg = candidate_config(cand, train_cfg)
        latency = 1000.0 * sum(r["predict_s"] for r in mine) / max(sum(r["rows"] for r in mine), 1)
        if cand["strategy"] == "feature_extraction":  # features made from a prefix also cost the prefix
            latency = 1000.0 * (Featurizer(cand, cfg, cache_dir).seconds_per_text(texts)
                                + plan["prefix_cost"].get(f"{cand['fingerprint']}|{cfg.precision}", 0.0))
        elif cfg.prefix_cache:  # the cached bottom's cost is part of a prediction's
            latency += 1000.0 * FrozenPrefix(cand, cfg, cache_dir, names).seconds_per_text(texts)
        rows.append({**cand, "latency_ms": latency, "encoder_passes": plan["passes"].get(cand["name"], 0),
                     "training": {k: getattr(cfg, k) for k in ("strategy", "precision", "learning_rate", "epochs", "batch_size")}
                     | dict(cand.get("train") or {})
                     | ({"freeze_layers": cfg.freeze_layers, "prefix_cache": cfg.prefix_cache} if cfg.strategy == "partial" else {}),
                     "metrics": summarize([{k: v for k, v in m.items() if k != "majority_rate"} for m in fold_metrics])})
    base = next((r for r in rows if r["strategy"] == "baseline"), None)
    if base is not None:  # each candidate against the baseline on the same folds
        n_train = float(np.mean([r["train_rows"] for r in results]))
        n_test = float(np.mean([r["rows"] for r in results]))
        for row in rows:
            if row is not base:
                row["vs_baseline"] = corrected_ttest([m[select_cfg.metric] for m in per_candidate[row["name"]]],
                                                     [m[select_cfg.metric] for m in per_candidate[base["name"]]], n_train, n_test)
                if row.get("tuned"):  # the best of N trials on these folds: optimistic, judge it on the test split
                    row["vs_baseline"]["after_selection"] = True
    winner = choose(rows, select_cfg.metric)
    beats_baseline = base is None or winner is not base
    if not beats_baseline:
        log.warning("no pre-trained candidate beat the TF-IDF baseline on CV %s: the baseline %s is the winner",
                    select_cfg.metric, base["name"])
    rule = f"max CV mean {select_cfg.metric}; ties (4 d.p.) -> fewer parameters, lower latency"
    summary = {"k": len(plan["folds"]), "name": winner["name"], "model": winner["model"], "strategy": winner["strategy"],
               "winner": winner, "metrics": winner["metrics"], "fold_metrics": per_candidate[winner["name"]], "rule": rule,
               "beats_baseline": beats_baseline}
    extra = {f"candidates/{slug(name)}/fold_metrics.json": fm for name, fm in per_candidate.items()}
    extra |= {"comparison.json": {"metric": select_cfg.metric, "winner": winner["name"], "rule": rule, "rows": rows},
              "comparison.md": comparison_markdown(rows, select_cfg.metric, winner["name"])}
    return summary, extra


def comparison_markdown(rows: list[dict], metric: str, winner: str) -> str:
    cols = ["accuracy", "f1_macro", "loss"]
    lines = ["| candidate | strategy / precision | " + " | ".join(f"{c} (mean ± std)" for c in cols)
             + f" | Δ {metric} vs baseline (p) | parameters | ms/text | |", "|---" * (len(cols) + 6) + "|"]
    for r in rows:
        cells = [f"{r['metrics'][c]['mean']:.4f} ± {r['metrics'][c]['std']:.4f}" for c in cols]
        vs = r.get("vs_baseline")
        delta = f"{vs['diff']:+.4f} (p={vs['p']:.3g}{', after selection' if vs.get('after_selection') else ''})" if vs else "-"
        mark = "**winner**" if r["name"] == winner else ("baseline" if r["strategy"] == "baseline" else "")
        how = f"{r['strategy']} / {r.get('precision', '-')}"
        lines.append(f"| {r['name']} | {how} | " + " | ".join(cells) + f" | {delta} | {r['parameters'] or '-'} | "
                     f"{r['latency_ms']:.2f} | {mark} |")
    return (f"Candidates scored on identical folds; choice by CV mean {metric}. p: corrected resampled t-test "
            "(Nadeau & Bengio) of the fold scores against the TF-IDF baseline, two-sided; 'after selection': the candidate's "
            "hyperparameters were tuned on these folds, so its p is optimistic.\n\n" + "\n".join(lines) + "\n")




# --- hyperparameter search (tuneline.pipeline.tune) ------------------------------------------------
NOT_SEARCHABLE = ("strategy", "precision", "seed", "trust_remote_code", "allow_pickle_weights", *TrainConfig.EXECUTION_ONLY)


def _searched_value(name: str, value):
    """A train value as a search parameter: a module list as 'query,value', null as 'auto'."""
    if name == "lora_target_modules":
        return "auto" if value is None else ",".join(value)
    return value


def train_values(params: dict) -> dict:
    """Search parameters as train.* values (the inverse of _searched_value)."""
    out = dict(params)
    if "lora_target_modules" in out:
        v = out["lora_target_modules"]
        out["lora_target_modules"] = None if v == "auto" else [m.strip() for m in str(v).split(",") if m.strip()]
    return out


def tune_targets(plan: dict, train_cfg: TrainConfig, tune_cfg, train_file: Path) -> list[dict]:
    """The plan's candidates that tune.candidates names (by name or strategy; null: all but the baseline),
    each with its strategy's search space and its configured values."""
    candidates = [c for c in plan["candidates"] if c["strategy"] != "baseline"]
    wanted = tune_cfg.candidates
    if wanted is not None:
        known = {c["name"] for c in candidates} | {c["strategy"] for c in candidates} | {c.get("requested_strategy") for c in candidates}
        if unknown := [w for w in wanted if w not in known]:
            raise ValueError(f"tune.candidates: {unknown} match no candidate; candidates: "
                             f"{', '.join(c['name'] for c in candidates)} (or their strategies)")
        candidates = [c for c in candidates if {c["name"], c["strategy"], c.get("requested_strategy")} & set(wanted)]
    allowed = [k for k in TrainConfig.model_fields if k not in NOT_SEARCHABLE]
    folds = hashlib.sha256(json.dumps(plan["folds"]).encode()).hexdigest()
    out = []
    for cand in candidates:
        space = tune_cfg.space.get(cand["strategy"])
        if not space:
            log.warning("%s: tune.space has no %r entry; not tuned", cand["name"], cand["strategy"])
            continue
        if bad := [k for k in space if k not in allowed]:
            raise ValueError(f"tune.space.{cand['strategy']}.{bad[0]}: not a searchable train key; allowed: {', '.join(allowed)}")
        cfg = candidate_config(cand, train_cfg)
        fixed = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in space and k not in TrainConfig.EXECUTION_ONLY}
        out.append({"name": cand["name"], "space": space, "values": {k: _searched_value(k, getattr(cfg, k)) for k in space},
                    "jobs": [i for i, j in enumerate(plan["jobs"]) if j["candidate"]["name"] == cand["name"]],
                    "key": {"model": cand["fingerprint"], "strategy": cand["strategy"], "train": fixed,
                            "data": file_md5(train_file), "folds": folds}})
    return out


def trial_jobs(plan: dict, target: dict, params: dict) -> list[dict]:
    """The target's fold jobs with `params`: same folds, same seeds (cv.seed + fold)."""
    jobs = [plan["jobs"][i] for i in target["jobs"]]
    cand = {**jobs[0]["candidate"], "train": train_values(params)}
    return [{**job, "candidate": cand} for job in jobs]


def adopt(plan: dict, target: dict, params: dict, info: dict) -> dict:
    """The plan with the target's candidate carrying its tuned values: the summary, the registered
    version and refit (candidate_config) all read them from there."""
    def tuned(c: dict) -> dict:
        return {**c, "train": train_values(params), "tuned": info} if c["name"] == target["name"] else c

    return {**plan, "candidates": [tuned(c) for c in plan["candidates"]],
            "jobs": [{**j, "candidate": tuned(j["candidate"])} for j in plan["jobs"]]}
