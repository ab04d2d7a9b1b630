"""Preprocess LLM rows: transcripts -> chat messages, long prompts cut to their latest turns, pairs
that still exceed llm.max_length dropped, duplicates removed, split by prompt (no prompt in both).
Messages are kept as JSON text in the parquet files.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from tuneline.config import PreprocessConfig
from tuneline.engine import chat
from tuneline.llm.config import LLMConfig
from tuneline.llm.data import field_value, prompt_key, response_text, sft_conversation, to_messages
from tuneline.tables import DataError, sample_and_split, write_processed

log = logging.getLogger(__name__)

LABEL_MAPS = {"preference": {"rejected": 0, "chosen": 1}, "chat_sft": {}}


class LLMPreprocessError(DataError):
    """Preprocessing left nothing to train or test on."""


def examples(raw: pd.DataFrame, task: str) -> list[dict]:
    """Decoded rows: prompt messages plus the response(s), with the full prompt's key."""
    out = []
    for r in raw.to_dict("records"):
        if task == "preference":
            prompt = to_messages(field_value(r["prompt"]))
            # a prompts file (grpo/rloo) has no answers: they stay empty
            ex = {"prompt": prompt} | {k: (response_text(field_value(r.get(k))) or "").strip() for k in ("chosen", "rejected")}
        else:
            conv = sft_conversation(r)
            prompt, ex = conv[:-1], {"prompt": conv[:-1], "response": conv[-1]["content"].strip()}
        out.append(ex | {"prompt_key": prompt_key(prompt), "line": int(r["line"]), "split": r.get("split", "train")})
    return out


def fit_lengths(rows: list[dict], tokenizer, cfg: LLMConfig, task: str) -> tuple[list[dict], dict]:
    kept, cut, dropped, lengths = [], 0, 0, []
    for ex in tqdm(rows, desc="fitting lengths", unit="row", leave=False):
        prompt = chat.cut_prompt(tokenizer, ex["prompt"], cfg.max_prompt_length)
        cut += len(prompt) < len(ex["prompt"])
        responses = [ex["chosen"], ex["rejected"]] if task == "preference" else [ex["response"]]
        n = chat.pair_tokens(tokenizer, prompt, responses)
        if n > cfg.max_length:
            dropped += 1
            continue
        lengths.append(n)
        kept.append(ex | {"prompt": prompt})
    stats = {"prompts_cut_to_latest_turns": cut, "dropped_overlength": dropped,
             "tokens_mean": float(np.mean(lengths)) if lengths else 0.0, "tokens_max": int(max(lengths, default=0))}
    return kept, stats


def to_table(df: pd.DataFrame, task: str) -> pd.DataFrame:
    if task == "preference":
        cols = {"prompt": df["prompt"].map(json.dumps), "chosen": df["chosen"], "rejected": df["rejected"]}
    else:
        conv = [p + [{"role": "assistant", "content": r}] for p, r in zip(df["prompt"], df["response"])]
        cols = {"messages": [json.dumps(c) for c in conv]}
    return pd.DataFrame(cols | {"prompt_key": df["prompt_key"], "line": df["line"]}).reset_index(drop=True)


def preprocess(task: str, cfg: LLMConfig, pre: PreprocessConfig, raw: pd.DataFrame, tokenizer, out_dir: Path) -> dict:
    """Step: write train/test parquet, label_map.json (the pair labels) and report.json."""
    rows = examples(raw, task)
    counts = {"rows_in": len(rows)}
    rows, length_stats = fit_lengths(rows, tokenizer, cfg, task)
    df = pd.DataFrame(rows)
    if df.empty:
        raise LLMPreprocessError(f"no example fits llm.max_length={cfg.max_length} tokens; raise it")
    content = ["prompt_key", "chosen", "rejected"] if task == "preference" else ["prompt_key", "response"]
    dup = df[content + ["split"]].astype(str).duplicated()
    counts["dropped_duplicates"] = int(dup.sum())
    df = df[~dup]
    train, test = sample_and_split(df, "prompt_key", pre, LLMPreprocessError, "prompts", counts)
    counts.update(rows_train=len(train), rows_test=len(test), prompts_train=int(train["prompt_key"].nunique()),
                  prompts_test=int(test["prompt_key"].nunique()))
    report = {"task": task, "counts": counts | length_stats, "max_length": cfg.max_length,
              "max_prompt_length": cfg.max_prompt_length, "labels": list(LABEL_MAPS[task])}
    write_processed(out_dir, to_table(train, task), to_table(test, task), LABEL_MAPS[task], report)
    log.info("LLM preprocess: %s", report["counts"])
    return report


def load_pairs(path: Path) -> list[dict]:
    """Processed preference rows as {prompt: messages, chosen, rejected}."""
    df = pd.read_parquet(path)
    return [{"prompt": json.loads(p), "chosen": c, "rejected": r} for p, c, r in zip(df["prompt"], df["chosen"], df["rejected"])]


def load_conversations(path: Path) -> list[list[dict]]:
    return [json.loads(m) for m in pd.read_parquet(path)["messages"]]
