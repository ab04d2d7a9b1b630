"""The classification data contract: a suite built from the `validate.*` params, run by tuneline.expectations.

Rows are checked as read (nulls, blanks, lengths, duplicates, labels, confidence), and the per-class row
counts as a derived frame, reported with every class's count.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from tuneline.config import ValidateConfig
from tuneline.expectations import _gx, run_suite, write_report


def build_suites(cfg: ValidateConfig, labels: list[str], labels_declared: bool, has_confidence: bool):
    """(expectation, problem in plain words) pairs on the rows, and on the per-class counts."""
    E = _gx().expectations
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
        (E.ExpectColumnValuesToNotBeNull(column="label", mostly=mostly), f"more labels are null than {nulls} allows"),
        (E.ExpectColumnValuesToBeInSet(column="label", value_set=labels), f"labels outside {allowed}"),
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
    labels = list(cfg.labels) if cfg.labels is not None else sorted(df["label"].dropna().astype(str).unique())
    row_exp, count_exp = build_suites(cfg, labels, cfg.labels is not None, "confidence" in df.columns)
    frame = df.copy()
    frame["text"] = frame["text"].astype(object)
    frame["label"] = frame["label"].astype(object)
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
    return {
        "success": all(r["success"] for r in results),
        "task": "classification",
        "rows": int(len(df)),
        "labels": labels,
        "labels_inferred": cfg.labels is None,
        "summary": f"labels {'inferred' if cfg.labels is None else 'declared'}: {', '.join(labels)}",
        "results": results,
    }


def validate(cfg: ValidateConfig, raw_path: Path, report_dir: Path) -> dict:
    """Step: validate the raw table; write report.json + report.html; raise on failure."""
    from tuneline.tables import read_raw

    df, info = read_raw(raw_path)
    report = validate_frame(df, cfg)
    report["source"] = " + ".join(info[k] for k in ("source", "test_source") if info.get(k)) or str(raw_path)
    write_report(report, report_dir)
    return {"expectations": len(report["results"]), "rows": report["rows"], "labels": report["labels"]}
