"""Data contract of the summarization task: a Great Expectations suite (tuneline.expectations owns GX) over values
derived with the base model's tokenizer; README ("Summarization") lists the checks. Duplicates key on
(document, aspect): aclsum gives each paper three times, once per aspect.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from tuneline.expectations import _gx, run_suite, write_report
from tuneline.summarization.data import document_key

MIN_ROWS = 4


def _text(values: pd.Series) -> pd.Series:
    return pd.Series([v if isinstance(v, str) else None for v in values], index=values.index, dtype=object)


def token_counts(tokenizer, texts: list) -> list:
    """Tokens of each text (None where there is no text), counted in one batched call."""
    present = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
    counts: list = [None] * len(texts)
    if present:
        ids = tokenizer([texts[i] for i in present], add_special_tokens=False)["input_ids"]
        for i, row in zip(present, ids):
            counts[i] = len(row)
    return counts


def derived_frame(raw: pd.DataFrame, cfg, tokenizer) -> pd.DataFrame:
    """One row per input row (index: file:line) with the values the suite checks."""
    out = pd.DataFrame(index=pd.Index(raw["where"].astype(str).tolist(), name="where"))
    doc = _text(pd.Series(raw[cfg.document_column].to_numpy(), index=out.index))
    summ = _text(pd.Series(raw[cfg.summary_column].to_numpy(), index=out.index))
    out["document"], out["summary"] = doc, summ
    out["document_tokens"] = pd.Series(token_counts(tokenizer, doc.tolist()), index=out.index, dtype="Int64").astype(float)
    out["summary_tokens"] = pd.Series(token_counts(tokenizer, summ.tolist()), index=out.index, dtype="Int64").astype(float)
    out["summary_longer_than_document"] = [isinstance(d, str) and isinstance(s, str) and len(s.split()) > len(d.split())
                                           for d, s in zip(doc, summ)]
    keys = [document_key(d) if isinstance(d, str) and d.strip() else None for d in doc]
    variant = next((raw[c].fillna("").astype(str).tolist() for c in ("aspect", "instruction") if c in raw.columns), [""] * len(raw))
    pairs = pd.Series([(k, v) if k is not None else None for k, v in zip(keys, variant)], index=out.index, dtype=object)
    out["duplicate_document"] = pairs.notna() & pairs.duplicated(keep="first")
    if "split" in raw.columns and (raw["split"] == "test").any():
        split = raw["split"].to_numpy()
        train_keys = {k for k, s in zip(keys, split) if s == "train" and k is not None}
        out["document_in_train_and_test"] = [s == "test" and k in train_keys for k, s in zip(keys, split)]
    return out


def build_suite(frame: pd.DataFrame, cfg) -> list[tuple[Any, str]]:
    E = _gx().expectations
    doc, summ = f"summarization.document_column={cfg.document_column!r}", f"summarization.summary_column={cfg.summary_column!r}"
    suite: list[tuple[Any, str]] = [(E.ExpectTableRowCountToBeBetween(min_value=MIN_ROWS), f"at least {MIN_ROWS} rows")]
    for col, what in (("document", doc), ("summary", summ)):
        suite += [(E.ExpectColumnValuesToNotBeNull(column=col), f"the {col} ({what}) is missing, null or not text"),
                  (E.ExpectColumnValuesToNotMatchRegex(column=col, regex=r"^\s*$"), f"the {col} ({what}) is empty")]
    suite += [
        (E.ExpectColumnValuesToBeInSet(column="duplicate_document", value_set=[False]),
         "the same document appears again with the same aspect/instruction (duplicates key on (document, aspect))"),
        (E.ExpectColumnValuesToBeInSet(column="summary_longer_than_document", value_set=[False]),
         "the summary has more words than its document"),
        (E.ExpectColumnValuesToBeBetween(column="document_tokens", min_value=cfg.min_document_tokens),
         f"the document is shorter than summarization.min_document_tokens={cfg.min_document_tokens} tokens"),
        (E.ExpectColumnValuesToBeBetween(column="document_tokens", max_value=cfg.max_document_tokens,
                                         mostly=1.0 - cfg.max_truncated_fraction),
         f"too many documents longer than summarization.max_document_tokens={cfg.max_document_tokens} tokens, which "
         f"preprocessing cuts (allowed for {cfg.max_truncated_fraction:.0%} of rows: summarization.max_truncated_fraction)"),
        (E.ExpectColumnValuesToBeBetween(column="summary_tokens", min_value=1, max_value=cfg.max_summary_tokens),
         f"the summary is longer than summarization.max_summary_tokens={cfg.max_summary_tokens} tokens"),
    ]
    if "document_in_train_and_test" in frame.columns:
        suite.append((E.ExpectColumnValuesToBeInSet(column="document_in_train_and_test", value_set=[False]),
                      "the same document is in both data.source (train) and data.test_source (test)"))
    return suite


def validate(cfg, raw: pd.DataFrame, source: str, tokenizer, report_dir: Path) -> dict:
    """Step: check the raw rows; write report.json + report.html; raise on failure."""
    frame = derived_frame(raw, cfg, tokenizer)
    results = run_suite(frame, build_suite(frame, cfg))
    over = int((frame["document_tokens"] > cfg.max_document_tokens).sum())
    fields = [c for c in raw.columns if c not in ("split", "where")]
    report = {"success": all(r["success"] for r in results), "task": "summarization", "source": source, "rows": int(len(raw)),
              "labels": [], "fields": fields, "results": results, "documents_over_max_tokens": over,
              "summary": f"columns: {', '.join(fields)}; {over} of {len(raw)} documents over "
                         f"summarization.max_document_tokens={cfg.max_document_tokens} tokens (cut in preprocessing)"}
    write_report(report, report_dir)
    return {"expectations": len(results), "rows": report["rows"], "task": "summarization", "documents_over_max_tokens": over}
