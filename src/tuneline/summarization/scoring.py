"""ROUGE through the project's own `evaluate` module (tuneline_rouge, loaded by path: offline, seeded)
and generation-length statistics."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

METRIC_DIR = Path(__file__).with_name("tuneline_rouge")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
GATE_METRIC = "rougeL"


@functools.lru_cache(maxsize=1)
def rouge_metric():
    import evaluate

    return evaluate.load(str(METRIC_DIR))


def rouge(predictions: list[str], references: list[str], cfg) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(means and seeded bootstrap intervals of ROUGE-1/2/L/Lsum F, per-row F-measures by type)."""
    result = rouge_metric().compute(predictions=predictions, references=references, use_stemmer=cfg.use_stemmer,
                                    bootstrap_samples=cfg.rouge_bootstrap_samples, seed=cfg.seed, per_row=True)
    per_row = {t: np.asarray(result.pop(f"{t}_per_row"), float) for t in ROUGE_TYPES}
    return {k: float(v) for k, v in result.items()}, per_row


def length_stats(texts: list[str], prefix: str = "gen") -> dict[str, float]:
    """Words per generated summary: mean, median, min, max, and the share that came out empty."""
    words = np.array([len(t.split()) for t in texts], float)
    if not len(words):
        return {}
    return {f"{prefix}_words_mean": float(words.mean()), f"{prefix}_words_median": float(np.median(words)),
            f"{prefix}_words_min": float(words.min()), f"{prefix}_words_max": float(words.max()),
            f"{prefix}_empty_fraction": float((words == 0).mean())}


def scored(predictions: list[str], references: list[str], cfg) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """ROUGE and length statistics of one model's summaries."""
    metrics, per_row = rouge(predictions, references, cfg)
    ref_words = np.array([len(r.split()) for r in references], float)
    return metrics | length_stats(predictions) | {"reference_words_mean": float(ref_words.mean()),
                                                   "documents": float(len(references))}, per_row


def mean_rouge_l(rows: dict[str, np.ndarray]) -> float:
    """The gate's statistic: mean ROUGE-L F over the rows."""
    return float(np.mean(rows[GATE_METRIC]))
