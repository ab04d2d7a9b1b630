"""Data contracts for the LLM tasks: a Great Expectations suite per task, plus checks that need the
base model's tokenizer (token lengths as the chat template renders them).

Rows are checked strictly (every field present and non-empty, chosen != rejected, well-formed
messages, no prompt in both train and test); token lengths may exceed `llm.max_length` for at most
`llm.max_overlength_fraction` of the rows (preprocessing drops those). A failure raises one error
naming the file, each failed field, the problem and the offending line numbers.
"""
from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from tuneline.llm import chat
from tuneline.llm.config import LLMConfig
from tuneline.llm.data import (
    conversation_problem, field_value, last_user_turn, prompt_key, response_text, sft_conversation, to_messages,
)
from tuneline.storage import atomic_path, write_json
from tuneline.classification.validation import DataValidationError, _gx, observed_text

log = logging.getLogger(__name__)
MIN_ROWS = 4


class LLMValidationError(DataValidationError):
    """An LLM data file broke its contract."""


def _text(value: Any) -> Any:
    """Flatten a decoded field to text for the blank check (messages -> their contents)."""
    if isinstance(value, list):
        return " ".join(str(m.get("content") or "") if isinstance(m, dict) else str(m) for m in value)
    return value


def derived_frame(raw: pd.DataFrame, task: str, tokenizer) -> pd.DataFrame:
    """One row per input line (index = line number) with the values the suite checks."""
    where = raw["where"] if "where" in raw.columns else raw["line"].astype(str)
    out = pd.DataFrame(index=pd.Index(where.astype(str).tolist(), name="where"))
    records = raw.to_dict("records")
    prompts: list = [None] * len(records)
    if task == "preference":
        decoded = {f: [field_value(r.get(f)) for r in records] for f in ("prompt", "chosen", "rejected") if f in raw.columns}
        for f, values in decoded.items():
            if f == "prompt":
                out[f] = pd.Series([_text(v) if isinstance(v, (str, list)) else None for v in values], index=out.index, dtype=object)
            else:  # a reply must be text (or one assistant message); anything else counts as missing
                replies = [response_text(v) for v in values]
                out[f] = pd.Series([r if isinstance(r, str) else None for r in replies], index=out.index, dtype=object)
        problems = []
        for i, p in enumerate(decoded.get("prompt", [None] * len(records))):
            # a missing or blank prompt is reported by the field checks; here: is a present prompt usable?
            msgs = to_messages(p) if isinstance(p, (str, list)) and str(_text(p)).strip() else None
            problems.append(conversation_problem(msgs, needs_final_assistant=False) if msgs is not None else None)
            prompts[i] = msgs if msgs is not None and problems[-1] is None else None
        out["prompt_problem"] = pd.Series(problems, index=out.index, dtype=object)
        if "chosen" in decoded and "rejected" in decoded:
            out["chosen_differs_from_rejected"] = [
                not (isinstance(c, str) and isinstance(r, str) and c.strip() == r.strip())
                for c, r in zip(out["chosen"], out["rejected"])
            ]
        none = [None] * len(records)
        pairs = zip(out["chosen"] if "chosen" in out else none, out["rejected"] if "rejected" in out else none)
        responses = [[v for v in pair if isinstance(v, str) and v.strip()] for pair in pairs]
        tokens = [chat.pair_tokens(tokenizer, last_user_turn(p), rs) if p and len(rs) == 2 else None for p, rs in zip(prompts, responses)]
    else:  # each row: `messages`, or `prompt` + `response`
        convs = [sft_conversation(r) for r in records]
        out["conversation"] = pd.Series([_text(c) if c is not None else None for c in convs], index=out.index, dtype=object)
        problems = [conversation_problem(c, needs_final_assistant=True) if c is not None else None for c in convs]
        out["conversation_problem"] = pd.Series(problems, index=out.index, dtype=object)
        ok = [c if p is None and c is not None else None for c, p in zip(convs, problems)]
        prompts = [c[:-1] if c else None for c in ok]
        tokens = [chat.n_tokens(tokenizer, last_user_turn(c)) if c else None for c in ok]
    out["min_tokens"] = pd.Series(tokens, index=out.index, dtype="Int64").astype(float)
    if "split" in raw.columns:
        keys = pd.Series([prompt_key(p) if p else None for p in prompts], index=out.index)
        split = pd.Series(raw["split"].to_numpy(), index=out.index)
        train_keys = set(keys[(split == "train") & keys.notna()])
        out["prompt_in_train_and_test"] = [(s == "test" and k is not None and k in train_keys) for s, k in zip(split, keys)]
    return out


def build_suite(frame: pd.DataFrame, task: str, cfg: LLMConfig) -> list[tuple[Any, str]]:
    """(expectation, what it means in plain words) pairs."""
    E = _gx().expectations
    suite: list[tuple[Any, str]] = [(E.ExpectTableRowCountToBeBetween(min_value=MIN_ROWS), f"at least {MIN_ROWS} examples")]
    if task == "chat_sft":
        suite.append((E.ExpectColumnValuesToNotBeNull(column="conversation"),
                      "neither field 'messages' nor both fields 'prompt' and 'response' are present"))
    for f in (["prompt", "chosen", "rejected"] if task == "preference" else []):
        suite.append((E.ExpectColumnToExist(column=f), f"field {f!r} is missing from the file"))
        if f in frame.columns:
            suite.append((E.ExpectColumnValuesToNotBeNull(column=f), f"field {f!r} is missing, null or not text"))
            suite.append((E.ExpectColumnValuesToNotMatchRegex(column=f, regex=r"^\s*$"), f"field {f!r} is empty"))
    for col, what in (("prompt_problem", "field 'prompt' is not a usable prompt"),
                      ("conversation_problem", "the conversation is not usable")):
        if col in frame.columns:
            suite.append((E.ExpectColumnValuesToBeNull(column=col), what))
    if "chosen_differs_from_rejected" in frame.columns:
        suite.append((E.ExpectColumnValuesToBeInSet(column="chosen_differs_from_rejected", value_set=[True]),
                      "fields 'chosen' and 'rejected' are identical"))
    suite.append((E.ExpectColumnValuesToBeBetween(column="min_tokens", min_value=1, max_value=cfg.max_length,
                                                  mostly=1.0 - cfg.max_overlength_fraction),
                  f"longer than llm.max_length={cfg.max_length} tokens even with only the last user turn "
                  f"(allowed for {cfg.max_overlength_fraction:.0%} of rows: llm.max_overlength_fraction)"))
    if "prompt_in_train_and_test" in frame.columns:
        suite.append((E.ExpectColumnValuesToBeInSet(column="prompt_in_train_and_test", value_set=[False]),
                      "the same prompt is in both data.source (train) and data.test_source (test)"))
    return suite


def run_suite(frame: pd.DataFrame, suite: list[tuple[Any, str]]) -> list[dict]:
    gx = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_def = context.data_sources.add_pandas(name="llm").add_dataframe_asset(name="rows").add_batch_definition_whole_dataframe("all")
    gx_suite = context.suites.add(gx.ExpectationSuite(name="llm_rows", expectations=[e for e, _ in suite]))
    result = batch_def.get_batch(batch_parameters={"dataframe": frame}).validate(gx_suite, result_format={"result_format": "SUMMARY"})
    meaning = {(e.expectation_type, getattr(e, "column", None)): what for e, what in suite}
    out = []
    for r in result.results:
        cfg = r.expectation_config
        kwargs = {k: v for k, v in cfg.kwargs.items() if k != "batch_id"}
        observed = r.result.get("observed_value")
        if observed is None and "unexpected_count" in r.result:
            count, total = r.result["unexpected_count"] or 0, r.result.get("element_count") or 0
            observed = f"{count} of {total} rows"
        out.append({
            "expectation": cfg.type, "kwargs": kwargs, "success": bool(r.success), "observed": observed,
            "problem": meaning.get((cfg.type, kwargs.get("column"))),
            "lines": [_where(i) for i in (r.result.get("partial_unexpected_index_list") or [])[:10]],
            "unexpected_sample": [str(v)[:80] for v in (r.result.get("partial_unexpected_list") or [])[:5]],
            "exception": (r.exception_info or {}).get("exception_message") if not r.success else None,
        })
    return out


def _where(index) -> str:
    """GX reports an unexpected row by its index value, or as {column: value, index name: value}."""
    return str(index.get("where", index)) if isinstance(index, dict) else str(index)


def describe_failure(report: dict) -> str:
    failed = [r for r in report["results"] if not r["success"]]
    lines = [f"data validation failed for {report['source']} (task {report['task']}): "
             f"{len(failed)} of {len(report['results'])} checks failed"]
    for r in failed:
        where = f" at {', '.join(r['lines'])}" if r["lines"] else ""
        why = f" ({'; '.join(dict.fromkeys(r['unexpected_sample']))})" if r["expectation"] == "expect_column_values_to_be_null" else ""
        lines.append(f"  - {r['problem']}{where}{why}: observed {observed_text(r)} [{r['expectation']} {r['kwargs']}]")
    return "\n".join(lines)


def render_html(report: dict) -> str:
    rows = "".join(
        f"<tr class='{'ok' if r['success'] else 'fail'}'><td>{'✔' if r['success'] else '✘'}</td><td>{html.escape(str(r['problem']))}</td>"
        f"<td>{html.escape(r['expectation'])}</td><td>{html.escape(observed_text(r))}</td><td>{html.escape(str(r['lines'] or ''))}</td></tr>"
        for r in report["results"]
    )
    status = "PASSED" if report["success"] else "FAILED"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>tuneline LLM data validation</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}tr.fail{{background:#fdd}}</style>
</head><body><h1>Data validation ({html.escape(report['task'])}): {status}</h1><p>Source: {html.escape(report['source'])} — {report['rows']} rows</p>
<table><thead><tr><th></th><th>check</th><th>expectation</th><th>observed</th><th>lines</th></tr></thead><tbody>{rows}</tbody></table></body></html>
"""


def validate(task: str, cfg: LLMConfig, raw: pd.DataFrame, source: str, tokenizer, report_dir: Path) -> dict:
    """Step: check the raw LLM rows; write report.json + report.html; raise on failure."""
    frame = derived_frame(raw, task, tokenizer)
    results = run_suite(frame, build_suite(frame, task, cfg))
    report = {"success": all(r["success"] for r in results), "task": task, "source": source, "rows": int(len(raw)),
              "labels": [], "fields": [c for c in raw.columns if c not in ("line", "split", "where")], "results": results,
              "overlength_rows": int((frame["min_tokens"] > cfg.max_length).sum())}
    with atomic_path(report_dir) as tmp:
        tmp.mkdir()
        write_json(tmp / "report.json", report)
        (tmp / "report.html").write_text(render_html(report), encoding="utf-8")
    if not report["success"]:
        raise LLMValidationError(describe_failure(report))
    log.info("LLM data validation passed: %d checks on %d rows", len(results), report["rows"])
    return {"expectations": len(results), "rows": report["rows"], "task": task}
