"""The pipeline shell: the eight steps every task runs, as plain functions of (Config, project root)
shared by DVC (`tuneline stage`) and Prefect (tasks/). What every task shares is done here, once; what
is the task's own comes from its plugin (tuneline.plugins.TaskPlugin), found by `config.task`.
"""
from __future__ import annotations

import json
import logging
import os
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

from tqdm.auto import tqdm

from tuneline import plugins
from tuneline.pipeline.stages import ORDER, Files, FoldRun, StageError, inputs, outputs
from tuneline.storage import atomic_path, read_json, remove_outputs, write_json

log = logging.getLogger(__name__)


def sequential(run: Callable[[dict], dict], jobs: list[dict]) -> list[dict]:
    return [run(job) for job in tqdm(jobs, desc="cross-validation", unit="fold", leave=False)]


def _preprocess(p, c, f: Files) -> dict:
    if not f.validation_report.is_file() or not read_json(f.validation_report).get("success"):
        raise StageError(f"{f.validation_report}: no passing data validation for {c.paths.raw}; run the validate stage first")
    return p.preprocess(c, f)


def _crossval(p, c, f: Files, map_jobs=sequential, map_trials=None) -> dict:
    """The task's fold jobs, mapped by `map_jobs(run, jobs)` (sequential here; the Prefect task maps
    them over its task runner): results come back in job order, so any schedule gives the same files.
    With tune.enabled, each candidate the task can tune is searched first (tuneline.pipeline.tune,
    trials mapped by `map_trials`), and scored by its best trial's folds."""
    plan = p.cv_plan(c, f)
    tuned: dict[str, dict] = {}
    if c.tune.enabled:
        from tuneline.pipeline import tune

        tuned = tune.search(p, c, f, plan, map_jobs, map_trials)
    fixed = {i: r for o in tuned.values() for i, r in zip(o["jobs"], o["results"])}
    todo = [i for i in range(len(plan["jobs"])) if i not in fixed]
    fixed |= dict(zip(todo, map_jobs(FoldRun(p, c, f, plan), [plan["jobs"][i] for i in todo])))
    results = [fixed[i] for i in range(len(plan["jobs"]))]
    extra_tune = tune.cv_files(tuned) if tuned else {}
    for name, o in tuned.items():
        plan = p.adopt(c, plan, {"name": name, "jobs": o["jobs"]}, o["params"], extra_tune["tune.json"][name])
    summary, extra = p.cv_summary(c, f, plan, results)
    extra |= extra_tune
    with atomic_path(f.cv_dir) as tmp:
        tmp.mkdir()
        write_json(tmp / f.folds.name, plan.get("meta", {}) | {"folds": plan["folds"]})
        write_json(tmp / f.fold_metrics.name, summary.pop("fold_metrics"))
        for rel, value in extra.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            if isinstance(value, (bytes, str)):
                (tmp / rel).write_bytes(value.encode() if isinstance(value, str) else value)
            else:
                write_json(tmp / rel, value)
        write_json(tmp / f.cv_summary.name, summary)
    write_json(f.metrics["crossval"], {"winner": summary["name"]} | {f"cv_{k}": v for k, v in summary["metrics"].items()})
    return summary


def _refit(p, c, f: Files) -> dict:
    from tuneline.config import save_config

    metrics = p.refit(c, f)
    save_config(c, f.model_params)
    write_json(f.metrics["refit"], metrics)
    log.info("test: %s", {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})
    return metrics


def _register(p, c, f: Files) -> dict:
    """Log the run and register its model once per set of inputs (a retry reuses that version)."""
    from tuneline.pipeline.fingerprint import read_values, stage_key
    from tuneline.pipeline.lineage import lineage_tags
    from tuneline.tracking import runs as tracking
    from tuneline.tracking.cleanup import retire_leftovers

    reg = p.registration(c, f)
    uri, name, (metric, higher) = tracking.tracking_uri(f.root), p.registered_name(c), p.metric(c)
    reg.artifacts = [f.model_params, f.validation_report, f.validation_page, f.preprocess_report, f.folds, f.fold_metrics,
                     f.cv_summary, *reg.artifacts]
    reg.tags = lineage_tags(f.root, f.data()) | reg.tags | {"tuneline.task": c.task}
    reg.version_tags = {"task": c.task, "metric": metric} | reg.version_tags
    tuned = read_json(f.cv_dir / "tune.json").get(read_json(f.cv_summary)["name"]) if (f.cv_dir / "tune.json").is_file() else None
    if tuned:  # the winner was refit with its best trial's values: the version says which, and from which study
        reg.version_tags |= {f"tune.{k}": json.dumps(v) for k, v in tuned["overrides"].items()}
        reg.version_tags |= {"tune.study": tuned["study"], "tune.best_trial": str(tuned["best_trial"]),
                             "tune.best_cv": f"{tuned['best_value']:.6f}", "tune.trial0_cv": f"{tuned['configured_value']:.6f}"
                             if tuned["configured_value"] is not None else "none"}
        if tuned.get("seed_spread"):
            reg.version_tags |= {"tune.seed_cv_mean": f"{tuned['seed_spread']['mean']:.6f}",
                                 "tune.seed_cv_std": f"{tuned['seed_spread']['std']:.6f}",
                                 "tune.seed_repeats": str(len(tuned["seed_spread"]["cv_means"]) - 1)}
        reg.params |= {"tuned": tuned["overrides"]}
        reg.artifacts.append(f.cv_dir / "tune.json")
    reg.params = read_values(c, "register") | reg.params
    key = stage_key("register", c, f.root)
    retire_leftovers(uri, c.tracking.experiment)  # what killed registrations left, whatever their inputs
    registration = tracking.find_registration(uri, c.tracking.experiment, name, key) or tracking.log_registered_model(
        uri, c.tracking.experiment, name, f.root, reg, read_json(f.cv_summary), read_json(f.eval_metrics), key)
    registration |= {"task": c.task, "metric": metric, "higher_is_better": higher} | reg.extra
    write_json(f.registration, registration)
    log.info("registered %s (run %s)", registration["model_uri"], registration["run_id"])
    return registration


def promote_version(c, root: Path | str, version: str, candidate: Any = None, force: bool = False,
                    reason: Optional[str] = None, name: Optional[str] = None) -> dict:
    """Gate `version` against the champion, both scored on this project's test split by the task, and
    apply the decision under the registry lock. `candidate`: the version's scores when known (refit's)."""
    from tuneline.tracking import runs as tracking
    from tuneline.tracking.promotion import PromotionError, promote_with

    p, f = plugins.get(c.task), Files(c.paths, root)
    uri, name, (metric, higher) = tracking.tracking_uri(f.root), name or p.registered_name(c), p.metric(c)
    tracking.check_version(uri, name, version, c.task)

    def decide(current: Optional[str]) -> dict:
        scores = candidate if candidate is not None else p.version_scores(c, f, uri, name, version)
        if current is None:
            return p.gate(c, scores, None)
        try:
            champion, error = p.version_scores(c, f, uri, name, current), None
        except PromotionError:
            raise
        except Exception as exc:  # missing artifacts, an unloadable model: the task's gate decides what that means
            champion, error = None, f"{type(exc).__name__}: {exc}"[:300]
            log.warning("champion version %s could not be re-scored: %s", current, error)
        return p.gate(c, scores, champion, error)

    decision = promote_with(uri, name, str(version), metric, decide, c.promote.mirror_stages, force, reason)
    return decision | {"higher_is_better": higher, "champion_uri": f"models:/{name}@champion"}


def _promote(p, c, f: Files) -> dict:
    from tuneline.tracking import runs as tracking

    reg = read_json(f.registration)
    decision = promote_version(c, f.root, reg["version"], p.candidate_scores(c, f), name=reg["registered_model_name"])
    decision |= {"model_uri": reg["model_uri"]}
    tracking.log_decision(tracking.tracking_uri(f.root), reg["run_id"], decision)
    write_json(f.promotion, decision)
    log.info("promotion: %s", decision["reason"])
    return decision


STEPS: dict[str, Callable[..., dict]] = {
    "ingest": lambda p, c, f: p.ingest(c, f), "validate": lambda p, c, f: p.validate(c, f), "preprocess": _preprocess,
    "select": lambda p, c, f: p.select(c, f), "crossval": _crossval, "refit": _refit, "register": _register, "promote": _promote,
}


def run_stage(name: str, config, root: Path | str = ".", **options) -> dict:
    """Run one step; `options` reach the step function (the crossval task passes its job mapper)."""
    if name not in STEPS:
        raise StageError(f"unknown stage {name!r}; stages: {', '.join(ORDER)}")
    f, plugin = Files(config.paths, root), plugins.get(config.task)
    # Every stage starts clean; validate still writes its report when the data fails.
    remove_outputs(*(f.root / o for o in outputs(name, config.paths)))
    try:
        return STEPS[name](plugin, config, f, **options)
    except Exception as exc:
        # tuneline's own errors already name the file and what to do; anything else (scikit-learn's
        # "After pruning, no terms remain") is put in terms of the step, its files and its columns.
        if isinstance(exc, StageError) or type(exc).__module__.partition(".")[0] == "tuneline" or _raised_by_tuneline(exc):
            raise
        raise StageError(f"{name} failed on {_working_on(name, config, plugin)}: {type(exc).__name__}: {exc}") from exc


def _raised_by_tuneline(exc: BaseException) -> bool:
    """A plain ValueError that tuneline's own code raised already says what is wrong and what to do."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and Path(__file__).resolve().parents[1] in Path(frames[-1].filename).resolve().parents


def _working_on(name: str, config, plugin) -> str:
    """'data/raw/dataset.parquet (column 'body' (data.text_column))': a step's input files and columns."""
    files = [str(p) for p in plugin.source_files(config)] if name == "ingest" else inputs(name, config.paths)
    values = config.to_dict()
    columns = [f"{value!r} ({key})" for key in plugin.columns.get(name, ())
               if (value := values.get(key.partition(".")[0], {}).get(key.partition(".")[2])) is not None]
    where = ", ".join(files) or "no input files"
    return where + (f" (column{'s' if len(columns) > 1 else ''} {', '.join(columns)})" if columns else "")


def run_summary(config, results: dict, elapsed: float) -> list[str]:
    """What `tuneline run` prints at the end (rich markup): the task's lines between the common ones."""
    from tuneline.tracking.runs import ui_hint

    p = plugins.get(config.task)
    reg, decision, cv = results["register"], results["promote"], results["crossval"]
    metric, _ = p.metric(config)
    stats = cv["metrics"][metric]
    view = f"#/experiments/{reg['experiment_id']}/runs?viewStateShareKey=tuneline"
    folds = cv.get("folds_note") or f"k={cv['k']}"

    return [
        f"\n[bold green]tuneline run ({config.task}) finished in {elapsed:.0f} s[/]",
        f"  model version : {reg['model_uri']}  (run {reg['run_id']})",
        *p.summary_lines(config, results),
        f"  cv {metric:<10}: {stats['mean']:.4f} ± {stats['std']:.4f} ({folds})",
        f"  promotion     : {'PROMOTED' if decision['promote'] else 'not promoted'} — {decision['reason']}",
        f"  champion      : {decision['champion_uri']}",
        f"  MLflow UI     : {ui_hint(reg['tracking_uri'], view)}",
        f"  Prefect UI    : PREFECT_HOME={os.environ.get('PREFECT_HOME', '~/.prefect')} prefect server start",
    ]
