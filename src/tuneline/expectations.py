"""The one module that owns Great Expectations: runs a suite built in code, explains and renders the result.

A task's validation step builds (expectation, plain-words problem) pairs and a report dict; `write_report`
saves it and raises `DataValidationError`, so nothing downstream runs.
"""
from __future__ import annotations

import html
import json
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from tuneline.storage import atomic_path, write_json

log = logging.getLogger(__name__)


class DataValidationError(ValueError):
    """The data broke its contract; the message lists each failed expectation."""


def _gx():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no phoning home from a pipeline step
    import great_expectations as gx

    return gx


def _informative(value: Any) -> bool:
    """A null or a True/False flag says nothing the problem text does not already say."""
    return not (isinstance(value, bool) or (pd.api.types.is_scalar(value) and pd.isna(value)))


def run_suite(frame: pd.DataFrame, suite: list[tuple[Any, str]]) -> list[dict]:
    """Validate `frame` against (expectation, problem in plain words) pairs; one result dict each.

    `lines` are the offending rows' index values (name the index, e.g. file:line, to make them useful).
    """
    gx = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_def = context.data_sources.add_pandas(name="frame").add_dataframe_asset(name="rows").add_batch_definition_whole_dataframe("all")
    gx_suite = context.suites.add(gx.ExpectationSuite(name="suite", expectations=[e for e, _ in suite]))
    problem = {e.id: what for e, what in suite}  # ids are assigned when the suite is added; results come unordered
    result = batch_def.get_batch(batch_parameters={"dataframe": frame}).validate(gx_suite, result_format={"result_format": "SUMMARY"})
    out = []
    for r in result.results:
        cfg = r.expectation_config
        observed = r.result.get("observed_value")
        if observed is None and "unexpected_count" in r.result:
            count, total = r.result["unexpected_count"] or 0, r.result.get("element_count") or 0
            observed = f"{count} unexpected ({100.0 * count / max(total, 1):.2f}%) of {total} rows"
        index = r.result.get("partial_unexpected_index_list") or []
        out.append({
            "expectation": cfg.type, "kwargs": {k: v for k, v in cfg.kwargs.items() if k != "batch_id"},
            "success": bool(r.success), "observed": observed, "problem": problem.get(cfg.id),
            "lines": [str(i.get(frame.index.name, i)) if isinstance(i, dict) else str(i) for i in index[:10]],
            "unexpected_sample": [str(v)[:80] for v in (r.result.get("partial_unexpected_list") or []) if _informative(v)][:5],
            "exception": (r.exception_info or {}).get("exception_message") if not r.success else None,
        })
    return out


def observed_text(result: dict) -> str:
    """How an expectation's observed value is shown in the error, the HTML page and the Prefect artifact."""
    if result["exception"]:
        return result["exception"]
    if result["expectation"] == "expect_column_to_exist":
        return "present" if result["success"] else "missing"
    observed = result["observed"]
    return observed if isinstance(observed, str) else json.dumps(observed, default=str)


def _title(report: dict) -> str:
    return str(report.get("source", "")) + (f" (task {report['task']})" if report.get("task") else "")


def describe_failure(report: dict) -> str:
    failed = [r for r in report["results"] if not r["success"]]
    lines = [f"data validation failed for {_title(report)}: {len(failed)} of {len(report['results'])} expectations failed"]
    for r in failed:  # problem and rows first, then the expectation: long samples come last
        col = r["kwargs"].get("column")
        args = {k: v for k, v in r["kwargs"].items() if k != "column"}
        where = f" at {', '.join(r['lines'])}" if r["lines"] else ""
        sample = f"; e.g. {list(dict.fromkeys(r['unexpected_sample']))}" if r["unexpected_sample"] else ""
        col_txt = f"column {col!r}, " if col else ""
        lines += [f"  - {r['problem']}{where}", f"    {col_txt}{r['expectation']} {args}: observed {observed_text(r)}{sample}"]
    return "\n".join(lines)


def render_html(report: dict) -> str:
    """A self-contained page (no CDN) listing every expectation with its observed value and offending rows."""
    status = "PASSED" if report["success"] else "FAILED"
    rows = "".join(
        f"<tr class='{'ok' if r['success'] else 'fail'}'><td>{'✔' if r['success'] else '✘'}</td>"
        f"<td>{html.escape(str(r.get('problem') or ''))}</td><td>{html.escape(r['expectation'])}</td>"
        f"<td>{html.escape(', '.join(f'{k}={v!r}' for k, v in r['kwargs'].items()))}</td>"
        f"<td>{html.escape(observed_text(r))}</td><td>{html.escape(', '.join(r.get('lines') or []))}</td></tr>"
        for r in report["results"]
    )
    summary = f" — {html.escape(report['summary'])}" if report.get("summary") else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>tuneline data validation: {html.escape(_title(report))}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}
tr.ok td:first-child{{color:green}}tr.fail{{background:#fdd}}</style></head><body>
<h1>Data validation: {status}</h1><p>Source: {html.escape(_title(report))} — {report['rows']} rows{summary}</p>
<table><thead><tr><th></th><th>fails when</th><th>expectation</th><th>arguments</th><th>observed</th><th>rows</th></tr></thead>
<tbody>{rows}</tbody></table></body></html>
"""


def summary_markdown(report: dict) -> str:
    """A short table for orchestration UIs (Prefect artifact)."""
    status = "passed" if report["success"] else "**FAILED**"
    summary = f"; {report['summary']}" if report.get("summary") else ""
    lines = [f"### Data validation {status}: {_title(report)}", f"{report['rows']} rows{summary}", "",
             "| | fails when | expectation | column | observed |", "|---|---|---|---|---|"]
    for r in report["results"]:
        lines.append(f"| {'✅' if r['success'] else '❌'} | {r.get('problem') or ''} | {r['expectation']} "
                     f"| {r['kwargs'].get('column', '')} | {observed_text(r)[:80]} |")
    return "\n".join(lines)


def write_report(report: dict, report_dir: Path) -> None:
    """Write report.json + report.html into `report_dir` in one rename; raise if the data failed."""
    with atomic_path(report_dir) as tmp:
        tmp.mkdir()
        write_json(tmp / "report.json", report)
        (tmp / "report.html").write_text(render_html(report), encoding="utf-8")
    if not report["success"]:
        raise DataValidationError(describe_failure(report))
    log.info("data validation passed for %s: %d expectations on %d rows", _title(report), len(report["results"]), report["rows"])
