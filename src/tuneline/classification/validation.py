"""The one module that owns Great Expectations: a suite built in code from params.

A failed validation raises `DataValidationError` listing every failed expectation; the report is
written as JSON and as a self-contained HTML page either way.
"""
from __future__ import annotations

import html
import json
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from tuneline.config import ValidateConfig
from tuneline.storage import atomic_path, write_json

log = logging.getLogger(__name__)


class DataValidationError(ValueError):
    """The data broke its contract; the message lists each failed expectation."""


def _gx():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    return gx


def build_suites(cfg: ValidateConfig, labels: list[str], has_confidence: bool):
    """Expectations on the rows, and on the per-class counts (a derived frame)."""
    gx = _gx()
    E = gx.expectations
    not_null_mostly = 1.0 - cfg.max_null_fraction
    rows = [
        E.ExpectColumnToExist(column="text"),
        E.ExpectColumnToExist(column="label"),
        E.ExpectColumnValuesToNotBeNull(column="text", mostly=not_null_mostly),
        E.ExpectColumnValuesToNotMatchRegex(column="text", regex=r"^\s*$", mostly=not_null_mostly),
        E.ExpectColumnValueLengthsToBeBetween(
            column="text", min_value=cfg.min_text_length, max_value=cfg.max_text_length
        ),
        E.ExpectColumnProportionOfUniqueValuesToBeBetween(
            column="text", min_value=1.0 - cfg.max_duplicate_fraction, max_value=1.0
        ),
        E.ExpectColumnValuesToNotBeNull(column="label", mostly=not_null_mostly),
        E.ExpectColumnValuesToBeInSet(column="label", value_set=labels),
        E.ExpectColumnUniqueValueCountToBeBetween(column="label", min_value=2, max_value=None),
    ]
    if has_confidence:
        rows.append(E.ExpectColumnValuesToBeBetween(column="confidence", min_value=0.0, max_value=1.0))
    counts = [E.ExpectColumnValuesToBeBetween(column="rows", min_value=cfg.min_rows_per_class, max_value=None)]
    return rows, counts


def _run(context, name: str, frame: pd.DataFrame, expectations: list) -> list[dict]:
    gx = _gx()
    source = context.data_sources.add_pandas(name=f"{name}_source")
    batch_def = source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe(f"{name}_batch")
    suite = context.suites.add(gx.ExpectationSuite(name=f"{name}_suite", expectations=expectations))
    result = batch_def.get_batch(batch_parameters={"dataframe": frame}).validate(suite)
    out = []
    for r in result.results:
        cfg = r.expectation_config
        kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id",)}
        observed = r.result.get("observed_value")
        if observed is None and "unexpected_count" in r.result:
            count, total = r.result["unexpected_count"] or 0, r.result.get("element_count") or 0
            observed = f"{count} unexpected ({100.0 * count / max(total, 1):.2f}%)"
        out.append(
            {
                "expectation": cfg.type,
                "kwargs": kwargs,
                "success": bool(r.success),
                "observed": observed,
                "unexpected_sample": [str(v)[:80] for v in (r.result.get("partial_unexpected_list") or [])[:5]],
                "exception": (r.exception_info or {}).get("exception_message") if not r.success else None,
            }
        )
    return out


def validate_frame(df: pd.DataFrame, cfg: ValidateConfig) -> dict[str, Any]:
    gx = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    labels = list(cfg.labels) if cfg.labels is not None else sorted(df["label"].dropna().astype(str).unique())
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    row_exp, count_exp = build_suites(cfg, labels, "confidence" in df.columns)
    frame = df.copy()
    frame["text"] = frame["text"].astype(object)
    frame["label"] = frame["label"].astype(object)
    counts = frame["label"].dropna().astype(str).value_counts()
    count_frame = pd.DataFrame({"label": counts.index.astype(object), "rows": counts.values.astype(int)})
    if count_frame.empty:
        count_frame = pd.DataFrame({"label": ["(none)"], "rows": [0]})
    per_class = _run(context, "class_counts", count_frame, count_exp)
    for r in per_class:  # reported against the label column, with every class's count
        r["kwargs"]["column"] = "label (rows per class)"
        r["observed"] = {str(k): int(v) for k, v in counts.items()}
        r["unexpected_sample"] = []
    results = _run(context, "rows", frame, row_exp) + per_class
    return {
        "success": all(r["success"] for r in results),
        "rows": int(len(df)),
        "labels": labels,
        "labels_inferred": cfg.labels is None,
        "results": results,
    }


def describe_failure(report: dict, source: str) -> str:
    failed = [r for r in report["results"] if not r["success"]]
    lines = [f"data validation failed for {source}: {len(failed)} of {len(report['results'])} expectations failed"]
    for r in failed:
        col = r["kwargs"].get("column", "")
        col_txt = f" column {col!r}:" if col else ""
        detail = r["exception"] or f"observed {r['observed']}"
        args = {k: v for k, v in r["kwargs"].items() if k != "column"}
        sample = f"; e.g. {r['unexpected_sample']}" if r["unexpected_sample"] else ""
        lines.append(f"  -{col_txt} {r['expectation']} {args} -> {detail}{sample}")
    return "\n".join(lines)


def observed_text(result: dict) -> str:
    """How an expectation's observed value is shown in the HTML page and the Prefect artifact."""
    if result["exception"]:
        return result["exception"]
    if result["expectation"] == "expect_column_to_exist":
        return "present" if result["success"] else "missing"
    observed = result["observed"]
    return observed if isinstance(observed, str) else json.dumps(observed, default=str)


def render_html(report: dict, source: str) -> str:
    """A self-contained page (no CDN) listing every expectation with its observed value."""
    status = "PASSED" if report["success"] else "FAILED"
    rows = []
    for r in report["results"]:
        args = ", ".join(f"{k}={v!r}" for k, v in r["kwargs"].items())
        observed = observed_text(r)
        rows.append(
            f"<tr class='{'ok' if r['success'] else 'fail'}'><td>{'✔' if r['success'] else '✘'}</td>"
            f"<td>{html.escape(r['expectation'])}</td><td>{html.escape(args)}</td>"
            f"<td>{html.escape(str(observed))}</td></tr>"
        )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>tuneline data validation</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}
tr.ok td:first-child{{color:green}}tr.fail{{background:#fdd}}</style></head><body>
<h1>Data validation: {status}</h1><p>Source: {html.escape(source)} — {report['rows']} rows — labels
{'inferred' if report['labels_inferred'] else 'declared'}: {html.escape(', '.join(report['labels']))}</p>
<table><thead><tr><th></th><th>expectation</th><th>arguments</th><th>observed</th></tr></thead>
<tbody>{''.join(rows)}</tbody></table></body></html>
"""


def validate(cfg: ValidateConfig, raw_path: Path, report_dir: Path) -> dict:
    """Step: validate the raw table; write report.json + report.html; raise on failure."""
    from tuneline.tables import read_raw

    df, info = read_raw(raw_path)
    source = info.get("source", str(raw_path))
    report = validate_frame(df, cfg)
    report["source"] = source
    with atomic_path(report_dir) as tmp:
        tmp.mkdir()
        write_json(tmp / "report.json", report)
        (tmp / "report.html").write_text(render_html(report, source), encoding="utf-8")
    if not report["success"]:
        raise DataValidationError(describe_failure(report, source))
    passed = sum(r["success"] for r in report["results"])
    log.info("data validation passed: %d expectations on %d rows", passed, report["rows"])
    return {"expectations": len(report["results"]), "rows": report["rows"], "labels": report["labels"]}


def summary_markdown(report: dict) -> str:
    """A short table for orchestration UIs (Prefect artifact)."""
    status = "passed" if report["success"] else "**FAILED**"
    lines = [
        f"### Data validation {status}: {report.get('source', '')}",
        f"{report['rows']} rows; labels: {', '.join(report['labels'])}",
        "",
        "| | expectation | column | observed |",
        "|---|---|---|---|",
    ]
    for r in report["results"]:
        observed = observed_text(r)
        lines.append(f"| {'✅' if r['success'] else '❌'} | {r['expectation']} | {r['kwargs'].get('column', '')} | {observed[:80]} |")
    return "\n".join(lines)
