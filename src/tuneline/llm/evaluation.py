"""Score an adapter (or the bare base) on held-out rows with the task's metric; answer fixed prompts.

torch/transformers/peft only. Used by cross-validation, the refit's test evaluation, promotion
(re-scoring the champion on the candidate's held-out rows) and the benchmark.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tuneline.engine import generation
from tuneline.llm import metrics
from tuneline.engine.adapters import load_adapter

log = logging.getLogger(__name__)


def score(method: str, model, tokenizer, rows: list, beta: float, batch_size: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(metrics, per-row scores) of a loaded model on conversations (SFT) or pairs (preference)."""
    if method == "chat_sft":
        scores = metrics.sft_scores(model, tokenizer, rows, batch_size)
        return metrics.sft_metrics(scores), scores
    if method == "dpo":
        scores = metrics.dpo_scores(model, tokenizer, rows, beta, batch_size)
        return metrics.preference_metrics(scores), scores
    if method == "reward_model":
        scores = metrics.reward_scores(model, tokenizer, rows, batch_size)
        return metrics.reward_metrics(scores), scores
    raise ValueError(f"unknown LLM method {method!r}")


def evaluate_adapter(adapter_dir: Path, base_folder: str, rows: list, batch_size: int,
                     prompts: list | None = None, max_new_tokens: int = 0, extra_rows: list | None = None) -> dict:
    """Load once; score `rows`; optionally score `extra_rows` (e.g. training pairs) and answer `prompts`."""
    model, tokenizer, meta = load_adapter(adapter_dir, base_folder)
    method, beta = meta["method"], float(meta.get("beta", 0.1))
    result_metrics, scores = score(method, model, tokenizer, rows, beta, batch_size)
    out = {"metrics": result_metrics, "scores": scores, "method": method}
    if extra_rows:
        out["extra_metrics"] = score(method, model, tokenizer, extra_rows, beta, batch_size)[0]
    if prompts and method != "reward_model":
        out["answers"] = generation.answer(model, tokenizer, prompts, max_new_tokens)
        with model.disable_adapter():
            out["base_answers"] = generation.answer(model, tokenizer, prompts, max_new_tokens)
    log.info("%s on %d held-out rows: %s", method, len(rows), {k: round(v, 4) for k, v in result_metrics.items()})
    return out
