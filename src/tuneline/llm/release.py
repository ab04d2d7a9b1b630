"""Register an LLM adapter in MLflow and promote it against the champion, re-scored on the same
held-out rows (the candidate's processed test split) with the task's metric.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np

from tuneline.config import Config
from tuneline.llm.config import TASK_METRICS
from tuneline.llm.metrics import row_scores, row_statistic
from tuneline.llm.stages import _method, _p, _rows
from tuneline.storage import read_json, write_json

log = logging.getLogger(__name__)


class PromotionError(RuntimeError):
    pass


def register(c: Config, root: Path) -> dict:
    from tuneline import tracking
    from tuneline.lineage import lineage_tags
    from tuneline.llm import tracking as llm_tracking
    from tuneline.stages import processed_files

    p, method = c.paths, _method(c)
    metric, higher = TASK_METRICS[method]
    files = {"raw": _p(root, p.raw), **{k.split(".")[0]: _p(root, v) for k, v in processed_files(p).items() if k.endswith(".parquet")}}
    selection = read_json(_p(root, p.selection))
    cv_summary = read_json(_p(root, p.cv_dir) / "summary.json")
    eval_dir = _p(root, p.eval_dir)
    test_metrics = read_json(eval_dir / "metrics.json")
    base = selection["base"]
    run_name = f"{method}-{Path(base['id']).name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    params = {"task": c.task, "llm": c.llm.model_dump(mode="json"), "data": c.data.model_dump(mode="json"),
              "preprocess": c.preprocess.model_dump(mode="json"), "cv": c.cv.model_dump(mode="json")}
    base_tags = {f"base.{k}": str(v) for k, v in base.items()}
    tags = lineage_tags(root, files) | base_tags | {"tuneline.task": c.task, "tuneline.method": method,
                                                    "cv.mode": f"{cv_summary['mode']} ({cv_summary['k']} split{'s' if cv_summary['k'] > 1 else ''})"}
    artifacts = [
        _p(root, p.model_dir) / "params.yaml", _p(root, p.validation_dir) / "report.json", _p(root, p.validation_dir) / "report.html",
        _p(root, p.processed_dir) / "report.json", _p(root, p.cv_dir) / "folds.json", _p(root, p.cv_dir) / "fold_metrics.json",
        _p(root, p.cv_dir) / "summary.json", eval_dir / "scores.json", eval_dir / "generations.json",
    ]
    value = test_metrics[f"test_{metric}"]
    cv_stats = cv_summary["metrics"][metric]
    description = (f"{method} LoRA adapter on {base['id']} (sha256 {base['sha256'][:12]}…) — test {metric} {value:.4f}; "
                   f"{cv_summary['mode']} CV {cv_stats['mean']:.4f} ± {cv_stats['std']:.4f}")
    version_tags = {"task": c.task, "method": method, "metric": metric, f"test.{metric}": f"{value:.6f}", **base_tags}
    generations = read_json(eval_dir / "generations.json")
    registration = llm_tracking.log_llm_run(
        tracking.tracking_uri(root), c.tracking.experiment, c.llm.model_name(c.task), root, run_name, params, tags, cv_summary,
        read_json(_p(root, p.cv_dir) / "fold_metrics.json"), test_metrics, generations, artifacts, _p(root, p.model_dir),
        version_tags, description,
    )
    registration |= {"task": c.task, "method": method, "metric": metric, "higher_is_better": higher, "test_metrics": test_metrics,
                     "cv_metrics": {k: s["mean"] for k, s in cv_summary["metrics"].items()}, "base": base}
    write_json(_p(root, p.registration), registration)
    log.info("registered %s (run %s)", registration["model_uri"], registration["run_id"])
    return registration


def rescore_champion(c: Config, root: Path, uri: str, name: str, version: str, method: str) -> tuple[float, dict[str, np.ndarray], list]:
    """The champion's metric and per-row scores on the candidate's held-out rows (its own base, checked by hash)."""
    from tuneline.llm import tracking as llm_tracking
    from tuneline.llm.base_model import base_from_reference
    from tuneline.llm.evaluation import evaluate_adapter
    from tuneline.llm.modelio import read_meta

    rows, keys = _rows(c, _p(root, c.paths.processed_dir) / "test.parquet")
    dst = Path(tempfile.mkdtemp(prefix="tuneline-champion-"))
    try:
        adapter = llm_tracking.download_adapter(uri, name, version, dst)
        base = base_from_reference(read_meta(adapter)["base"])
        result = evaluate_adapter(adapter, base.folder, rows, c.llm.eval_batch_size)
    finally:
        shutil.rmtree(dst, ignore_errors=True)
    return float(result["metrics"][TASK_METRICS[method][0]]), result["scores"], keys


def decide(c: Config, method: str, candidate: float, champion: Optional[float], candidate_scores: Optional[dict] = None,
           champion_scores: Optional[dict] = None) -> dict:
    """The registry's score rule with a paired bootstrap over the held-out rows both models were scored on."""
    from tuneline.registry import decide as score_rule, paired_bootstrap_stat

    metric, higher = TASK_METRICS[method]
    p_value = test = None
    if champion is not None and candidate_scores is not None and champion_scores is not None:
        stat = lambda rows: row_statistic(method, rows)  # noqa: E731
        p_value = paired_bootstrap_stat(stat, row_scores(method, candidate_scores), row_scores(method, champion_scores), higher,
                                        c.promote.bootstrap_samples, c.cv.seed)
        test = "paired_bootstrap"
    d = score_rule(metric, candidate, champion, c.promote.min_delta, higher_is_better=higher, p_value=p_value,
                   alpha=c.promote.alpha, test=test).to_dict()
    d.pop("class_recall_change", None)
    return d | {"reason": d["reason"] + ("" if champion is None else " on the same held-out rows")}


def promote(c: Config, root: Path) -> dict:
    from tuneline import tracking
    from tuneline.llm import tracking as llm_tracking

    reg = read_json(_p(root, c.paths.registration))
    uri, name, method = tracking.tracking_uri(root), reg["registered_model_name"], reg["method"]
    metric, higher = TASK_METRICS[method]
    candidate = float(reg["test_metrics"][f"test_{metric}"])
    current = llm_tracking.champion(uri, name)
    champion_value, rescored_on = None, None
    if current is not None and current["version"] == reg["version"]:
        decision = {"promote": False, "reason": "already champion", "metric": metric, "candidate": candidate, "champion": candidate, "delta": 0.0}
    else:
        if current is not None:
            if current["tags"].get("method") != method:
                raise PromotionError(f"{name}: champion v{current['version']} is a {current['tags'].get('method')!r} model, "
                                     f"the candidate a {method!r} one; use a separate llm.registered_model_name")
            champion_value, champion_scores, keys = rescore_champion(c, root, uri, name, current["version"], method)
            rescored_on = len(keys)
            log.info("champion v%s re-scored on %d held-out rows: %s %.4f", current["version"], rescored_on, metric, champion_value)
            stored = read_json(_p(root, c.paths.eval_dir) / "scores.json")
            if stored.get("prompt_key") != keys:
                raise PromotionError(f"{_p(root, c.paths.eval_dir) / 'scores.json'}: its rows are not the test rows the champion was "
                                     f"re-scored on ({len(stored.get('prompt_key') or [])} vs {len(keys)}); re-run refit")
            candidate_scores = {k: np.asarray(v) for k, v in stored.items() if k != "prompt_key"}
            decision = decide(c, method, candidate, champion_value, candidate_scores, champion_scores)
        else:
            decision = decide(c, method, candidate, None)
        if decision["promote"]:
            llm_tracking.set_champion(uri, name, reg["version"], None if current is None else current["version"])
    decision |= {"version": reg["version"], "previous_champion": None if current is None else current["version"],
                 "higher_is_better": higher, "champion_rescored_on_rows": rescored_on, "model_uri": reg["model_uri"], "champion_uri": f"models:/{name}@champion"}
    llm_tracking.log_decision(uri, reg["run_id"], decision)
    write_json(_p(root, c.paths.promotion), decision)
    log.info("promotion: %s", decision["reason"])
    return decision
