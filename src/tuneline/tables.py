"""Users' tables on disk: reading CSV/TSV/JSON/JSONL/Parquet files as they come (encoding, delimiter,
format), and the raw table every task's ingest writes (Parquet, with how it was read as metadata).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tuneline.config import DataConfig
from tuneline.storage import atomic_path

log = logging.getLogger(__name__)

_META_KEY = b"tuneline"
SNIFF_DELIMITERS = ",\t;|"
# format by suffix; the first that matches in this order wins (x.json.parquet is Parquet), else csv
_SUFFIXES = {"parquet": (".parquet", ".pq"), "jsonl": (".jsonl", ".ndjson"), "json": (".json",), "tsv": (".tsv", ".tab")}


class DataError(ValueError):
    """The input table cannot be used; the message names the file, the column and the problem."""


def _detect_format(path: Path, fmt: str) -> str:
    suffixes = {s.lower() for s in path.suffixes}
    return fmt if fmt != "auto" else next((f for f, ends in _SUFFIXES.items() if suffixes & set(ends)), "csv")


def _decode(path: Path, raw: bytes, encoding: str) -> tuple[str, str]:
    if b"\x00" in raw[:65536]:
        raise DataError(f"{path}: contains NUL bytes — this is a binary file, not a CSV/TSV/JSON table")
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
    delim = max(SNIFF_DELIMITERS, key=header.count)
    names = [h.strip().strip('"') for h in header.split(delim)]
    index = prefix.count(delim)
    return f"line {line_no}, column {names[index]!r}" if line_no > 1 and index < len(names) else f"line {line_no}"


def _sniff_delimiter(path: Path, text: str) -> str:
    sample = "\n".join(text.splitlines()[:50])
    try:
        return csv.Sniffer().sniff(sample, delimiters=SNIFF_DELIMITERS).delimiter
    except csv.Error:
        return ","


def _read_jsonl(path: Path, text: str) -> pd.DataFrame:
    try:
        return pd.read_json(io.StringIO(text), lines=True, dtype=False)
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON Lines: {exc}") from None


def _json_kind(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def _read_json(path: Path, text: str, expected: str) -> pd.DataFrame:
    """A .json file: an array of records (one object per row), or JSON Lines under a .json name."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # a second value after the first: one object per line
            return _read_jsonl(path, text)
        raise DataError(f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    want = "expected an array of records, one object per row: [{...}, {...}] (or JSON Lines)"
    if isinstance(data, dict):
        nested = [k for k, v in data.items() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)]
        hint = f"; the records look to be under key {nested[0]!r}: save that array alone" if nested else ""
        raise DataError(f"{path}: holds a JSON object (keys: {list(data)[:10]}), not an array of records; {want}{hint}")
    if not isinstance(data, list):
        raise DataError(f"{path}: holds {_json_kind(data)}, not an array of records; {want}")
    if not data:
        raise DataError(f"{path}: holds an empty JSON array; {expected}")
    bad = next((i for i, r in enumerate(data) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DataError(f"{path}: item {bad} of the JSON array is {_json_kind(data[bad])} ({json.dumps(data[bad])[:60]}), "
                        f"not a record; {want}")
    return pd.DataFrame(data, dtype=object)  # values as written: 1 and 1.0 stay apart until validation compares labels


def read_table(cfg: DataConfig, path: Path) -> tuple[pd.DataFrame, dict]:
    """Read a user's table as strings; return it with a description of how it was read."""
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
            df = _read_jsonl(path, text)
        elif fmt == "json":
            df = _read_json(path, text, expected)
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


def write_raw(df: pd.DataFrame, info: dict, raw_path: Path) -> None:
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata(dict(table.schema.metadata or {}) | {_META_KEY: json.dumps(info).encode()})
    with atomic_path(raw_path) as tmp:
        pq.write_table(table, tmp)


def write_processed(out_dir: Path, train: pd.DataFrame, test: pd.DataFrame, label_map: dict, report: dict) -> None:
    """A preprocess step's outputs, in one rename: train/test parquet, label_map.json and report.json."""
    from tuneline.storage import write_json

    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        train.to_parquet(tmp / "train.parquet", index=False)
        test.to_parquet(tmp / "test.parquet", index=False)
        write_json(tmp / "label_map.json", label_map)
        write_json(tmp / "report.json", report)


def sample_and_split(df: pd.DataFrame, key: str, pre, error: type[Exception], what: str, counts: dict):
    """(train, test): at most preprocess.sample_size rows (seeded), split with no `key` on both sides and
    neither side empty, else `error`; counts gets rows_sampled."""
    from tuneline.folds import split_by_group

    if pre.sample_size is not None and pre.sample_size < len(df):
        df = df.sample(n=pre.sample_size, random_state=pre.seed).sort_index()
    counts["rows_sampled"] = len(df)
    train, test = split_by_group(df, df[key], pre.test_size, pre.seed)
    if overlap := set(train[key]) & set(test[key]):  # validation rejects this for given files; a random split groups
        raise error(f"{len(overlap)} {what} in both train and test")
    if train.empty or test.empty:
        raise error(f"the {'train' if train.empty else 'test'} split is empty after preprocessing ({counts})")
    return train, test


def text_key(text: str) -> str:
    """Hash of a text with spacing and case normalised: what 'the same prompt/document' means for duplicates and leakage."""
    return hashlib.sha256(" ".join(text.split()).casefold().encode()).hexdigest()[:16]


def source_of(info: dict) -> str:
    """What the raw table was read from (its ingest info), for reports and errors."""
    return " + ".join(info[k] for k in ("source", "test_source") if info.get(k))


def input_frame(model_input, *columns: str) -> tuple[pd.DataFrame, str]:
    """A pyfunc's input as a DataFrame (a list: the first column's values) and the first of `columns` it holds."""
    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame({columns[0]: list(model_input)})
    if (column := next((c for c in columns if c in frame.columns), None)) is None:
        alternatives = "".join(f" (or {c!r})" for c in columns[1:])
        raise ValueError(f"input needs a {columns[0]!r}{alternatives} column; got {list(frame.columns)}")
    return frame, column


def read_raw(raw_path: Path) -> tuple[pd.DataFrame, dict]:
    table = pq.read_table(raw_path)
    info = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
    return table.to_pandas(), info
