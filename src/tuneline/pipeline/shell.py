"""The pipeline's steps as plain functions of (Config, project root), shared by DVC and Prefect.

Each step reads only its config sections (listed in SECTIONS, mirrored by dvc.yaml's `params:`),
deletes its previous outputs before it runs (as `dvc repro` does) and writes new ones atomically.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from tuneline.classification import crossval as cv_mod
from tuneline.config import Config, PathsConfig
from tuneline.storage import read_json, remove_outputs, write_json

log = logging.getLogger(__name__)

ORDER = ("ingest", "validate", "preprocess", "select", "crossval", "refit", "register", "promote")

# Config sections each stage reads. dvc.yaml lists exactly these under `params:` (a test checks).
SECTIONS: dict[str, tuple[str, ...]] = {
    "ingest": ("data", "task"),
    "validate": ("validate", "task", "llm"),
    "preprocess": ("preprocess", "task", "llm"),
    "select": ("select", "train", "task", "llm"),
    "crossval": ("cv", "train", "select", "task", "llm"),
    "refit": ("train", "task", "llm"),
    "register": ("data", "validate", "preprocess", "select", "cv", "train", "tracking", "task", "llm"),
    "promote": ("tracking", "promote", "task", "llm"),
}


class StageError(RuntimeError):
    pass


def _p(root: Path, rel: str) -> Path:
    return Path(root) / rel


def _llm(name: str) -> Callable[[Config, Path], dict]:
    """The LLM tasks' version of a step (task: chat_sft | preference): same inputs, outputs and paths."""
    from tuneline.llm import stages as llm_stages

    return getattr(llm_stages, name)


def processed_files(paths: PathsConfig) -> dict[str, str]:
    d = paths.processed_dir
    return {n: f"{d}/{n}" for n in ("train.parquet", "test.parquet", "label_map.json", "report.json")}


def metrics_files(paths: PathsConfig) -> dict[str, str]:
    return {"crossval": f"{paths.metrics_dir}/cv.json", "refit": f"{paths.metrics_dir}/test.json"}


def outputs(name: str, paths: PathsConfig) -> list[str]:
    """What each stage writes, relative to the root: dvc.yaml's `outs:` then `metrics:`."""
    outs = {
        "ingest": [paths.raw],
        "validate": [paths.validation_dir],
        "preprocess": list(processed_files(paths).values()),
        "select": [paths.selection],
        "crossval": [paths.cv_dir],
        "refit": [paths.model_dir, paths.eval_dir],
        "register": [paths.registration],
        "promote": [paths.promotion],
    }[name]
    metric = metrics_files(paths).get(name)
    return outs + ([metric] if metric else [])


def inputs(name: str, paths: PathsConfig) -> list[str]:
    """The files each stage reads, relative to the root: dvc.yaml's `deps:` other than code (a test
    checks). Cache keys and registration keys hash these (tuneline.pipeline.fingerprint)."""
    proc = processed_files(paths)
    return {
        "ingest": [],  # data.source lives outside the project; fingerprint.source_files adds it
        "validate": [paths.raw],
        "preprocess": [paths.raw, paths.validation_dir],
        "select": [],
        "crossval": [proc["train.parquet"], proc["label_map.json"], paths.selection],
        "refit": [proc["train.parquet"], proc["test.parquet"], proc["label_map.json"], paths.cv_dir],
        "register": [paths.validation_dir, proc["report.json"], paths.cv_dir, paths.model_dir, paths.eval_dir],
        "promote": [paths.registration, proc["test.parquet"], proc["label_map.json"], paths.eval_dir],
    }[name]


def ingest(c: Config, root: Path) -> dict:
    if c.task != "classification":
        return _llm("ingest")(c, root)
    from tuneline.classification.data import ingest as step

    return step(c.data, _p(root, c.paths.raw))


def validate(c: Config, root: Path) -> dict:
    if c.task != "classification":
        return _llm("validate")(c, root)
    from tuneline.classification.validation import validate as step

    return step(c.validate_, _p(root, c.paths.raw), _p(root, c.paths.validation_dir))


def preprocess(c: Config, root: Path) -> dict:
    if c.task != "classification":
        return _llm("preprocess")(c, root)
    from tuneline.classification.preprocess import preprocess as step

    report = _p(root, c.paths.validation_dir) / "report.json"
    if not report.is_file() or not read_json(report).get("success"):
        raise StageError(f"{report}: no passing data validation for {c.paths.raw}; run the validate stage first")
    return step(c.preprocess, _p(root, c.paths.raw), _p(root, c.paths.processed_dir))


def select(c: Config, root: Path) -> dict:
    if c.task != "classification":
        return _llm("select")(c, root)
    from tuneline.classification.selection import select as step

    return step(c.select, c.train, _p(root, c.paths.selection))


def crossval(c: Config, root: Path, map_jobs=cv_mod.sequential) -> dict:
    if c.task != "classification":
        return _llm("crossval")(c, root)
    summary = cv_mod.crossval(
        c.cv, c.train, c.select, _p(root, c.paths.processed_dir), _p(root, c.paths.selection),
        _p(root, c.paths.feature_cache_dir), _p(root, c.paths.cv_dir), map_jobs=map_jobs,
    )
    write_json(_p(root, metrics_files(c.paths)["crossval"]), {"winner": summary["winner"]["name"]} | {f"cv_{k}": v for k, v in summary["metrics"].items()})
    return summary


def refit(c: Config, root: Path) -> dict:
    if c.task != "classification":
        return _llm("refit")(c, root)
    from tuneline.config import save_config

    from tuneline.classification.refit import refit_and_test

    metrics = refit_and_test(
        c.train, _p(root, c.paths.processed_dir), _p(root, c.paths.cv_dir),
        _p(root, c.paths.feature_cache_dir), _p(root, c.paths.model_dir), _p(root, c.paths.eval_dir),
    )
    save_config(c, _p(root, c.paths.model_dir) / "params.yaml")
    write_json(_p(root, metrics_files(c.paths)["refit"]), {f"test_{k}": v for k, v in metrics.items()})
    return metrics


def register(c: Config, root: Path) -> dict:
    if c.task != "classification":
        return _llm("register")(c, root)
    from tuneline.tracking import runs as tracking
    from tuneline.pipeline.lineage import lineage_tags

    p = c.paths
    files = {"raw": _p(root, p.raw), **{k.split(".")[0]: _p(root, v) for k, v in processed_files(p).items()}}
    cv_summary = read_json(_p(root, p.cv_dir) / "summary.json")
    short = Path(cv_summary["model"]).name
    run_name = f"{short}-{cv_summary['strategy']}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    eval_dir = _p(root, p.eval_dir)
    artifacts = [
        _p(root, p.model_dir) / "params.yaml",
        _p(root, p.validation_dir) / "report.json",
        _p(root, p.validation_dir) / "report.html",
        _p(root, p.processed_dir) / "report.json",
        _p(root, p.processed_dir) / "label_map.json",
        _p(root, p.cv_dir) / "folds.json",
        _p(root, p.cv_dir) / "summary.json",
        _p(root, p.cv_dir) / "comparison.json",
        _p(root, p.cv_dir) / "comparison.md",
        eval_dir / "confusion_matrix.png",
        eval_dir / "learning_curves.png",
        eval_dir / "per_class.json",
        eval_dir / "classification_report.txt",
        eval_dir / "history.json",
    ]
    from tuneline.classification.crossval import slug

    comparison = read_json(_p(root, p.cv_dir) / "comparison.json")
    fold_metrics = {r["name"]: read_json(_p(root, p.cv_dir) / "candidates" / slug(r["name"]) / "fold_metrics.json")
                    for r in comparison["rows"]}
    uri = tracking.tracking_uri(root)
    params = {s: c.to_dict()["validate" if s == "validate_" else s] for s in SECTIONS["register"]}
    # Idempotent: a retry, or a rerun with the same inputs, reuses the version registered for them.
    from tuneline.pipeline.fingerprint import stage_key

    key = stage_key("register", c, root)
    registration = tracking.find_registration(uri, c.tracking.experiment, c.tracking.registered_model_name, key)
    if registration is None:
        registration = tracking.log_pipeline_run(
            uri, c.tracking.experiment, c.tracking.registered_model_name, root, run_name, params,
            lineage_tags(root, files), cv_summary, comparison, fold_metrics,
            read_json(eval_dir / "metrics.json"), artifacts, _p(root, p.model_dir), registration_key=key,
        )
    write_json(_p(root, p.registration), registration)
    log.info("registered %s (run %s)", registration["model_uri"], registration["run_id"])
    return registration


def promote(c: Config, root: Path) -> dict:
    """Gate this run's registered version against the champion, both scored on this test split."""
    if c.task != "classification":
        return _llm("promote")(c, root)
    import pandas as pd

    from tuneline.tracking import runs as tracking
    from tuneline.tracking.promotion import load_test_split, promote_version

    reg = read_json(_p(root, c.paths.registration))
    test, label_map = load_test_split(_p(root, c.paths.processed_dir))
    # the refit model's own predictions on this split: the registered version need not be re-loaded
    predicted = pd.read_parquet(_p(root, c.paths.eval_dir) / "predictions.parquet")["predicted"].astype(str).tolist()
    uri = tracking.tracking_uri(root)
    decision = promote_version(uri, reg["registered_model_name"], reg["version"], test, label_map, c.promote,
                               candidate_labels=predicted)
    decision |= {"model_uri": reg["model_uri"], "champion_uri": f"models:/{reg['registered_model_name']}@champion"}
    tracking.log_decision(uri, reg["run_id"], decision)
    write_json(_p(root, c.paths.promotion), decision)
    return decision


STEPS: dict[str, Callable[[Config, Path], dict]] = {
    "ingest": ingest, "validate": validate, "preprocess": preprocess, "select": select,
    "crossval": crossval, "refit": refit, "register": register, "promote": promote,
}


def run_stage(name: str, config: Config, root: Path | str = ".", **options) -> dict:
    """Run one step; `options` reach the step function (the crossval task passes its job mapper)."""
    if name not in STEPS:
        raise StageError(f"unknown stage {name!r}; stages: {', '.join(ORDER)}")
    root = Path(root)
    # Every stage starts clean; validate still writes its report when the data fails.
    remove_outputs(*(_p(root, o) for o in outputs(name, config.paths)))
    return STEPS[name](config, root, **options)
