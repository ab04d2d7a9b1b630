"""Data contracts for the LLM tasks: a Great Expectations suite per task, plus token lengths as the base's chat
template renders them (README, "LLM fine-tuning", lists the checks). Too-long rows may pass up to
llm.max_overlength_fraction, as preprocessing drops them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from tuneline.engine import chat
from tuneline.engine.lora_config import RL_METHODS
from tuneline.llm.config import LLMConfig
from tuneline.llm.data import (
    conversation_problem, field_value, last_user_turn, prompt_key, response_text, sft_conversation, to_messages,
)
from tuneline.expectations import _gx, run_suite, write_report

MIN_ROWS = 4


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
        pairs = zip(*(out.get(f, [None] * len(records)) for f in ("chosen", "rejected")))
        responses = [[v for v in pair if isinstance(v, str) and v.strip()] for pair in pairs]
        if "chosen" not in decoded and "rejected" not in decoded:  # a prompts file (grpo/rloo): the prompt alone
            tokens = [chat.n_tokens(tokenizer, last_user_turn(p)) if p else None for p in prompts]
        else:
            tokens = [chat.pair_tokens(tokenizer, last_user_turn(p), rs) if p and len(rs) == 2 else None
                      for p, rs in zip(prompts, responses)]
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


def _required(frame: pd.DataFrame, task: str, cfg: LLMConfig) -> list[str]:
    """The fields every row needs: a policy optimised against a reward model (grpo/rloo) reads only
    prompts, so a prompts file ({"prompt": …} lines) will do; a file with either answer field is checked as pairs."""
    if task != "preference":
        return []
    if cfg.preference_method in RL_METHODS and not {"chosen", "rejected"} & set(frame.columns):
        return ["prompt"]
    return ["prompt", "chosen", "rejected"]


def build_suite(frame: pd.DataFrame, task: str, cfg: LLMConfig) -> list[tuple[Any, str]]:
    """(expectation, what it means in plain words) pairs."""
    E = _gx().expectations
    suite: list[tuple[Any, str]] = [(E.ExpectTableRowCountToBeBetween(min_value=MIN_ROWS), f"at least {MIN_ROWS} examples")]
    if task == "chat_sft":
        suite.append((E.ExpectColumnValuesToNotBeNull(column="conversation"),
                      "neither field 'messages' nor both fields 'prompt' and 'response' are present"))
    for f in _required(frame, task, cfg):
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


def validate(task: str, cfg: LLMConfig, raw: pd.DataFrame, source: str, tokenizer, report_dir: Path) -> dict:
    """Step: check the raw LLM rows; write report.json + report.html; raise on failure."""
    frame = derived_frame(raw, task, tokenizer)
    results = run_suite(frame, build_suite(frame, task, cfg))
    fields = [c for c in raw.columns if c not in ("line", "split", "where")]
    overlength = int((frame["min_tokens"] > cfg.max_length).sum())
    report = {"success": all(r["success"] for r in results), "task": task, "source": source, "rows": int(len(raw)),
              "labels": [], "fields": fields, "results": results, "overlength_rows": overlength,
              "summary": f"fields: {', '.join(fields)}; {overlength} rows over llm.max_length={cfg.max_length} tokens"}
    write_report(report, report_dir)
    return {"expectations": len(results), "rows": report["rows"], "task": task}
