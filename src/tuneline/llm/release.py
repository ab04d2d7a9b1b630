"""Register an LLM adapter in MLflow and promote it against the champion, re-scored on the same
held-out rows (the candidate's processed test split) with the task's metric.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

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
    from tuneline.tracking import runs as tracking
    from tuneline.pipeline.fingerprint import stage_key
    from tuneline.pipeline.lineage import lineage_tags
    from tuneline.llm import tracking as llm_tracking
    from tuneline.pipeline.shell import processed_files

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
    uri, name = tracking.tracking_uri(root), c.llm.model_name(c.task)

    def log_run(key: str) -> dict:
        return llm_tracking.log_llm_run(
            uri, c.tracking.experiment, name, root, run_name, params, tags, cv_summary,
            read_json(_p(root, p.cv_dir) / "fold_metrics.json"), test_metrics, generations, artifacts, _p(root, p.model_dir),
            version_tags, description, registration_key=key,
        )

    # Idempotent, like the classifier's: a retry, or a rerun with the same inputs, reuses the version registered for them.
    registration = tracking.register_once(uri, c.tracking.experiment, name, stage_key("register", c, root), log_run)
    registration |= {"task": c.task, "method": method, "metric": metric, "higher_is_better": higher, "test_metrics": test_metrics,
                     "base": base}
    write_json(_p(root, p.registration), registration)
    log.info("registered %s (run %s)", registration["model_uri"], registration["run_id"])
    return registration


def rescore_champion(c: Config, root: Path, uri: str, name: str, version: str) -> tuple[dict[str, np.ndarray], list]:
    """The champion's per-row scores on the candidate's held-out rows (its own base, checked by hash), and their prompt keys."""
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
    return result["scores"], keys


def score(method: str, scores: dict) -> float:
    """The task's promotion metric from per-row scores (perplexity for chat_sft, a win rate otherwise)."""
    return row_statistic(method, row_scores(method, scores))


def decide(c: Config, method: str, candidate: float, champion: Optional[float], candidate_scores: Optional[dict] = None,
           champion_scores: Optional[dict] = None) -> dict:
    """The registry's score rule with a paired bootstrap over the held-out rows both models were scored on."""
    from tuneline.tracking.gate import decide as score_rule, paired_bootstrap_stat

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


def promote_scores(c: Config, uri: str, name: str, version: str, method: str, scores: dict, keys: list,
                   rescore: Callable[[str], tuple[dict, list]]) -> dict:
    """Gate `version` (its per-row `scores` on the held-out rows `keys`) against the champion, which
    `rescore(champion version)` scores on the same rows, through the promotion every task shares
    (tuneline.tracking.promotion.promote_with: registry lock, champion/previous/challenger aliases, stages)."""
    from tuneline.tracking import runs as tracking
    from tuneline.tracking.promotion import promote_with

    metric, higher = TASK_METRICS[method]

    def gate(current: Optional[str]) -> dict:
        if current is None:
            return decide(c, method, score(method, scores), None)
        champion_method = tracking.client(uri).get_model_version(name, current).tags.get("method")
        if champion_method != method:
            raise PromotionError(f"{name}: champion v{current} is a {champion_method!r} model, "
                                 f"the candidate a {method!r} one; use a separate llm.registered_model_name")
        champion_scores, champion_keys = rescore(current)
        if champion_keys != keys:
            raise PromotionError(f"the candidate's scores are not on the rows the champion was re-scored on "
                                 f"({len(keys)} vs {len(champion_keys)}); re-run refit")
        log.info("champion v%s re-scored on %d held-out rows: %s %.4f", current, len(keys), metric, score(method, champion_scores))
        return decide(c, method, score(method, scores), score(method, champion_scores), scores, champion_scores) | {
            "champion_rescored_on_rows": len(keys)}

    decision = promote_with(uri, name, version, metric, gate, c.promote.mirror_stages)
    return {"champion_rescored_on_rows": None} | decision | {"higher_is_better": higher, "champion_uri": f"models:/{name}@champion"}


def promote(c: Config, root: Path) -> dict:
    from tuneline.tracking import runs as tracking

    reg = read_json(_p(root, c.paths.registration))
    uri, name, method = tracking.tracking_uri(root), reg["registered_model_name"], reg["method"]
    stored = read_json(_p(root, c.paths.eval_dir) / "scores.json")
    keys = stored.pop("prompt_key")
    scores = {k: np.asarray(v) for k, v in stored.items()}
    decision = promote_scores(c, uri, name, reg["version"], method, scores, keys,
                              lambda version: rescore_champion(c, root, uri, name, version))
    decision |= {"model_uri": reg["model_uri"]}
    tracking.log_decision(uri, reg["run_id"], decision)
    write_json(_p(root, c.paths.promotion), decision)
    log.info("promotion: %s", decision["reason"])
    return decision
