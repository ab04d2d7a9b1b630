"""The classification data contract: a suite built from the `validate.*` params, run by tuneline.expectations.

Rows are checked with their labels as classes (tuneline.classification.labels: trimmed, numbers compared as
numbers, case folded on request) for nulls, blanks, lengths, numbers posing as text, duplicates, labels,
case-only label variants and confidence; the per-class row counts as a derived frame, reported with every
class's count. The report records the label mapping, which preprocessing applies.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from tuneline.classification.labels import apply_mapping, case_variants, describe_merges, label_mapping, merges
from tuneline.config import ValidateConfig
from tuneline.expectations import _gx, run_suite, write_report
from tuneline.tables import read_raw, source_of

# A text column this numeric is an id or a score column, not text (and TF-IDF finds no terms in it).
NUMERIC_TEXT_FRACTION = 0.95
NUMERIC_TEXT = r"^\s*[+-]?(?:\d{1,3}(?:,\d{3})+(?:\.\d*)?|\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*%?\s*$"


def build_suites(cfg: ValidateConfig, labels: list[str], labels_declared: bool, has_confidence: bool,
                 variants: list[list[str]]):
    """(expectation, problem in plain words) pairs on the rows, and on the per-class counts.
    `variants`: groups of labels that differ only in letter case, which fail unless folded or pinned."""
    E = _gx().expectations
    numeric = f"{NUMERIC_TEXT_FRACTION:.0%}"
    case = "; ".join(" / ".join(map(repr, g)) for g in variants) or "none"
    mostly, nulls = 1.0 - cfg.max_null_fraction, f"validate.max_null_fraction={cfg.max_null_fraction}"
    allowed = "validate.labels" if labels_declared else "the labels found (validate.labels is not set)"
    rows = [
        (E.ExpectColumnToExist(column="text"), "column 'text' is missing (data.text_column)"),
        (E.ExpectColumnToExist(column="label"), "column 'label' is missing (data.label_column)"),
        (E.ExpectColumnValuesToNotBeNull(column="text", mostly=mostly), f"more texts are null than {nulls} allows"),
        (E.ExpectColumnValuesToNotMatchRegex(column="text", regex=r"^\s*$", mostly=mostly),
         f"more texts are blank than {nulls} allows"),
        (E.ExpectColumnValueLengthsToBeBetween(column="text", min_value=cfg.min_text_length, max_value=cfg.max_text_length),
         f"texts shorter than validate.min_text_length={cfg.min_text_length} or longer than "
         f"validate.max_text_length={cfg.max_text_length} characters"),
        (E.ExpectColumnProportionOfUniqueValuesToBeBetween(column="text", min_value=1.0 - cfg.max_duplicate_fraction, max_value=1.0),
         f"more texts are repeated than validate.max_duplicate_fraction={cfg.max_duplicate_fraction} allows"),
        # mostly is the share of non-numeric texts that must remain: just above 5% fails at exactly 95% numbers
        (E.ExpectColumnValuesToNotMatchRegex(column="text", regex=NUMERIC_TEXT, mostly=round(1 - NUMERIC_TEXT_FRACTION + 1e-9, 9)),
         f"{numeric} or more of the texts are numbers, not text: is data.text_column the text column?"),
        (E.ExpectColumnValuesToNotBeNull(column="label", mostly=mostly), f"more labels are null than {nulls} allows"),
        (E.ExpectColumnValuesToBeInSet(column="label", value_set=labels), f"labels outside {allowed}"),
        (E.ExpectColumnValuesToNotBeInSet(column="label", value_set=[v for g in variants for v in g]),
         f"labels that differ only in letter case ({case}): set validate.fold_label_case: true to merge them, "
         "or list the classes in validate.labels"),
        (E.ExpectColumnUniqueValueCountToBeBetween(column="label", min_value=2, max_value=None), "fewer than 2 classes"),
    ]
    if has_confidence:
        rows.append((E.ExpectColumnValuesToBeBetween(column="confidence", min_value=0.0, max_value=1.0),
                     "confidence outside [0, 1] (data.confidence_column)"))
    counts = [(E.ExpectColumnValuesToBeBetween(column="rows", min_value=cfg.min_rows_per_class, max_value=None),
               f"classes with fewer rows than validate.min_rows_per_class={cfg.min_rows_per_class}")]
    return rows, counts


def _row_ids(df: pd.DataFrame) -> pd.Index:
    """'row N' counts the data rows of data.source from 1; 'test row N' those of data.test_source."""
    split = df["split"].astype(str) if "split" in df.columns else pd.Series("train", index=df.index)
    n = split.groupby(split).cumcount() + 1
    return pd.Index([f"{'test ' if s == 'test' else ''}row {i}" for s, i in zip(split, n)], name="where")


def validate_frame(df: pd.DataFrame, cfg: ValidateConfig) -> dict[str, Any]:
    mapping = label_mapping(df["label"], cfg.labels, cfg.fold_label_case)
    frame = df.copy()
    frame["text"] = frame["text"].astype(object)
    frame["label"] = apply_mapping(frame["label"], mapping)
    found = sorted(frame["label"].dropna().astype(str).unique())
    labels = list(cfg.labels) if cfg.labels is not None else found
    # pinned labels are the user's classes as they want them; folding merges the variants away
    variants = case_variants(found) if cfg.labels is None and not cfg.fold_label_case else []
    row_exp, count_exp = build_suites(cfg, labels, cfg.labels is not None, "confidence" in df.columns, variants)
    frame.index = _row_ids(frame)
    counts = frame["label"].dropna().astype(str).value_counts()
    # indexed by label, so a failed count check names the classes that are too small
    count_frame = pd.DataFrame({"rows": counts.values.astype(int)}, index=pd.Index([f"class {c!r}" for c in counts.index], name="where"))
    if count_frame.empty:
        count_frame = pd.DataFrame({"rows": [0]}, index=pd.Index(["(none)"], name="where"))
    per_class = run_suite(count_frame, count_exp)
    for r in per_class:  # reported against the label column, with every class's count
        r["kwargs"]["column"] = "label (rows per class)"
        r["observed"] = {str(k): int(v) for k, v in counts.items()}
        r["unexpected_sample"] = []
    results = run_suite(frame, row_exp) + per_class
    merged = merges(df["label"], mapping)
    return {"success": all(r["success"] for r in results), "task": "classification", "rows": int(len(df)), "labels": labels,
            "labels_inferred": cfg.labels is None, "summary": f"labels {'inferred' if cfg.labels is None else 'declared'}: "
            f"{', '.join(labels)}" + (f"; merged: {describe_merges(merged)}" if merged else ""),
            "label_mapping": mapping, "label_merges": merged, "results": results}


def validate(cfg: ValidateConfig, raw_path: Path, report_dir: Path) -> dict:
    """Step: validate the raw table; write report.json + report.html; raise on failure."""
    df, info = read_raw(raw_path)
    report = validate_frame(df, cfg)
    report["source"] = source_of(info) or str(raw_path)
    write_report(report, report_dir)
    return {"expectations": len(report["results"]), "rows": report["rows"], "labels": report["labels"]}
