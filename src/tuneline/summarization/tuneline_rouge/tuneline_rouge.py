"""ROUGE-1/2/L/Lsum as an `evaluate` metric that works offline and gives the same numbers every run.

Load it by path: `evaluate.load("<this folder>")`. Backed by Google's `rouge-score`; differs from the
hub's `rouge` module in two ways, both on purpose:
- ROUGE-Lsum needs sentences: they come from `split_sentences` below (a rule-based splitter, no
  nltk punkt download), joined with newlines as rouge-score expects (split_summaries=False);
- the confidence intervals come from a bootstrap over rows seeded by `seed`, so two runs agree.
Scores are F-measures, the mean over rows; `{type}_low` / `{type}_high` bound the `confidence`
interval; `per_row=True` adds each row's F-measures (`{type}_per_row`), what a paired test needs.
"""
import re

import datasets
import evaluate
import numpy as np
from rouge_score import rouge_scorer

from tuneline.summarization.scoring import ROUGE_TYPES

# A sentence ends at . ! ? (or a closing quote/bracket after one) followed by space and an upper-case
# letter, a digit or an opening quote/bracket; a newline always ends one. Common abbreviations are kept whole.
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_ABBREVIATIONS = re.compile(r"(?:\b(?:e\.g|i\.e|et al|etc|vs|cf|Fig|Eq|Sec|Tab|Dr|Mr|Mrs|Ms|No)|\b[A-Z])\.$")

_DESCRIPTION = "ROUGE-1/2/L/Lsum F-measures (rouge-score) with an offline sentence splitter and seeded bootstrap intervals."
_KWARGS = """
Args:
    predictions: list of generated summaries. references: list of reference summaries.
    rouge_types: subset of rouge1, rouge2, rougeL, rougeLsum (default all).
    use_stemmer: Porter stemming (rouge-score). bootstrap_samples, confidence, seed: the intervals.
    per_row: also return each row's F-measures.
"""


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`: lines, then the rule above within each line (abbreviations kept whole)."""
    out = []
    for line in text.splitlines():
        start = 0
        for m in _BOUNDARY.finditer(line):
            if _ABBREVIATIONS.search(line[start:m.start()].rstrip("\"')]")):
                continue
            out.append(line[start:m.start() + len(m.group(0).rstrip())].strip())
            start = m.end()
        out.append(line[start:].strip())
    return [s for s in out if s]


def with_sentence_breaks(text: str) -> str:
    """What rouge-score's ROUGE-Lsum reads: one sentence a line."""
    return "\n".join(split_sentences(text))


class TunelineRouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="Lin, 2004. ROUGE: A Package for Automatic Evaluation of Summaries.",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            reference_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
        )

    def _compute(self, predictions, references, rouge_types=None, use_stemmer=False, bootstrap_samples=1000,
                 confidence=0.95, seed=0, per_row=False):
        types = list(rouge_types or ROUGE_TYPES)
        unknown = sorted(set(types) - set(ROUGE_TYPES))
        if unknown:
            raise ValueError(f"unknown rouge_types {unknown}; allowed: {list(ROUGE_TYPES)}")
        scorer = rouge_scorer.RougeScorer(types, use_stemmer=use_stemmer, split_summaries=False)
        rows = [scorer.score(with_sentence_breaks(ref), with_sentence_breaks(pred)) for pred, ref in zip(predictions, references)]
        out = {}
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(rows), (bootstrap_samples, len(rows))) if rows else None
        tail = 100 * (1 - confidence) / 2
        for t in types:
            f = np.array([r[t].fmeasure for r in rows], dtype=float)
            out[t] = float(f.mean()) if len(f) else float("nan")
            if idx is not None:
                means = f[idx].mean(axis=1)
                out[f"{t}_low"], out[f"{t}_high"] = (float(v) for v in np.percentile(means, [tail, 100 - tail]))
            if per_row:
                out[f"{t}_per_row"] = f.tolist()
        return out
