"""Preprocess summarization rows: instruction resolved per row, long documents cut, split by document.

A document over summarization.max_document_tokens keeps its FIRST tokens (for papers the abstract and what follows,
for news the lead); summaries are never cut (README, "Summarization"). Splits group by the document's normalised
hash, so no document is in both train and test.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from tuneline.config import PreprocessConfig
from tuneline.summarization.data import document_key, instruction_for
from tuneline.tables import DataError, sample_and_split, write_processed

log = logging.getLogger(__name__)
COLUMNS = ["doc_key", "document", "summary", "instruction", "aspect", "truncated", "where"]


class SummarizationPreprocessError(DataError):
    """Preprocessing left nothing to train or test on."""


def truncate(tokenizer, documents: list[str], max_tokens: int) -> tuple[list[str], list[bool]]:
    """Each document cut to its first `max_tokens` tokens (decoded back to text), and whether it was cut."""
    ids = tokenizer(documents, add_special_tokens=False)["input_ids"]
    out, cut = [], []
    for doc, row in zip(documents, ids):
        cut.append(len(row) > max_tokens)
        out.append(tokenizer.decode(row[:max_tokens], skip_special_tokens=True).strip() if cut[-1] else doc)
    return out, cut


def preprocess(cfg, pre: PreprocessConfig, raw: pd.DataFrame, tokenizer, out_dir: Path) -> dict:
    """Step: write train/test parquet, an empty label_map.json (the shell's file set) and report.json."""
    records = raw.to_dict("records")
    documents = [str(r[cfg.document_column]).strip() for r in records]
    df = pd.DataFrame({
        "doc_key": [document_key(d) for d in documents], "summary": [str(r[cfg.summary_column]).strip() for r in records],
        "instruction": [instruction_for(cfg, r) for r in records],
        "aspect": [str(r["aspect"]) if isinstance(r.get("aspect"), str) else "" for r in records],
        "where": raw["where"].astype(str).tolist(), "split": [r.get("split", "train") for r in records],
    })
    df["document"], df["truncated"] = truncate(tokenizer, documents, cfg.max_document_tokens)
    counts = {"rows_in": len(df), "documents_truncated": int(df["truncated"].sum())}
    train, test = sample_and_split(df, "doc_key", pre, SummarizationPreprocessError, "documents", counts)
    counts |= {"rows_train": len(train), "rows_test": len(test), "documents_train": int(train["doc_key"].nunique()),
               "documents_test": int(test["doc_key"].nunique()), "truncated_train": int(train["truncated"].sum()),
               "truncated_test": int(test["truncated"].sum())}
    words = np.array([len(s.split()) for s in df["summary"]])
    report = {"task": "summarization", "counts": counts, "max_document_tokens": cfg.max_document_tokens,
              "truncation": "head: a longer document keeps its first summarization.max_document_tokens tokens",
              "summary_words_mean": float(words.mean()), "labels": []}
    write_processed(out_dir, train[COLUMNS].reset_index(drop=True), test[COLUMNS].reset_index(drop=True), {}, report)
    log.info("summarization preprocess: %s", counts)
    return report


def load_rows(path: Path) -> list[dict]:
    return pd.read_parquet(path).to_dict("records")
