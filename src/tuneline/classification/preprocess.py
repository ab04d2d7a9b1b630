"""Preprocess: repair text, drop what cannot be learnt from, encode labels, split without leakage."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import ftfy
import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from tuneline.classification.labels import apply_mapping, describe_merges, merges
from tuneline.config import PreprocessConfig
from tuneline.folds import split_by_group
from tuneline.tables import read_raw, source_of, write_processed

log = logging.getLogger(__name__)

# Text that reached us through a latin-1 fallback carries byte-level mojibake whose original bytes
# were lost upstream (e.g. "Google’¢_äŒ_Ü¢s"): a run of U+0080–U+00FF characters glued by "_".
_MOJIBAKE_RUN = re.compile(r"(?:[\u0080-\u00ff]+_?)+|_(?:[\u0080-\u00ff]+_?)+")
_URL = re.compile(r"(?:https?://|www\.)\S*", re.IGNORECASE)
_MENTION = re.compile(r"(?<![\w@])@\w{1,30}")
_SPACE = re.compile(r"\s+")


def _replace_mojibake(match: re.Match) -> str:
    s, e, text = match.start(), match.end(), match.string
    # Between two letters the lost character was almost always an apostrophe ("don't").
    if 0 < s and e < len(text) and text[s - 1].isalpha() and text[e].isalpha():
        return "'"
    return " "


def clean_text(text: str, cfg: PreprocessConfig, lossy_source: bool) -> str:
    if cfg.fix_encoding:
        if lossy_source:
            text = _MOJIBAKE_RUN.sub(_replace_mojibake, text)
        text = ftfy.fix_text(text, normalization="NFC")
    if cfg.mask_urls:
        text = _URL.sub("http", text)
    if cfg.mask_mentions:
        text = _MENTION.sub("@user", text)
    return _SPACE.sub(" ", text).strip()


def dedup_key(text: pd.Series) -> pd.Series:
    return text.str.casefold().str.replace(_SPACE, " ", regex=True).str.strip()


def clean_frame(df: pd.DataFrame, cfg: PreprocessConfig, lossy_source: bool) -> tuple[pd.DataFrame, dict]:
    counts = {"rows_in": int(len(df))}
    df = df.copy()
    mask = df["label"].isna() | (df["label"].astype(str).str.strip() == "")
    counts["dropped_missing_label"] = int(mask.sum())
    df = df[~mask]
    mask = df["text"].isna()
    df = df[~mask].copy()
    df["text"] = [clean_text(t, cfg, lossy_source) for t in df["text"].astype(str)]
    df["label"] = df["label"].astype(str).str.strip()
    empty = df["text"] == ""
    counts["dropped_empty_text"] = int(mask.sum() + empty.sum())
    df = df[~empty]
    if cfg.min_confidence is not None and "confidence" in df.columns:
        low = df["confidence"].isna() | (df["confidence"] < cfg.min_confidence)
        counts["dropped_low_confidence"] = int(low.sum())
        df = df[~low]
    key = dedup_key(df["text"])
    n_labels = df.groupby(key)["label"].transform("nunique")
    conflicting = n_labels > 1
    counts["dropped_conflicting_labels"] = int(conflicting.sum())
    df, key = df[~conflicting], key[~conflicting]
    # With a given test file, duplicates are dropped within each split; a text in both splits is
    # leakage, which check_leakage() handles per preprocess.leakage.
    within = key + "\x00" + df["split"] if "split" in df.columns else key
    dup = within.duplicated(keep="first") if cfg.drop_duplicates else pd.Series(False, index=key.index)
    counts["dropped_duplicates"] = int(dup.sum())
    df = df[~dup].reset_index(drop=True)
    counts["rows_clean"] = int(len(df))
    return df, counts


def stratified_sample(df: pd.DataFrame, size: int | None, seed: int) -> pd.DataFrame:
    if size is None or size >= len(df):
        return df
    sample, _ = train_test_split(df, train_size=size, stratify=df["label_id"], random_state=seed)
    return sample.sort_index()


def split(df: pd.DataFrame, cfg: PreprocessConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    if "split" in df.columns:  # a held-out test file was given (data.test_source)
        return df[df["split"] == "train"], df[df["split"] == "test"]
    if "group" in df.columns:
        return split_by_group(df, df["group"].fillna(""), cfg.test_size, cfg.seed)
    return train_test_split(df, test_size=cfg.test_size, stratify=df["label_id"], random_state=cfg.seed)


class LeakageError(ValueError):
    """The same normalised text is in both splits and params say to stop."""


def check_leakage(train: pd.DataFrame, test: pd.DataFrame, cfg: PreprocessConfig, source: str):
    """No normalised text may be in both splits: stop, or drop those rows from test (per params)."""
    leaked = dedup_key(test["text"]).isin(set(dedup_key(train["text"])))
    n = int(leaked.sum())
    if n and cfg.leakage == "fail":
        examples = test.loc[leaked, "text"].head(3).tolist()
        raise LeakageError(
            f"{source}: {n} test rows of column 'text' also appear (normalised) in train, e.g. {examples}; "
            "set preprocess.drop_duplicates: true, or preprocess.leakage: drop"
        )
    return train, test[~leaked], n


def merge_labels(raw: pd.DataFrame, label_mapping: dict[str, str], report: Path) -> tuple[pd.DataFrame, dict]:
    """Each row's label as the class validation decided (its report's label_mapping); a merge is warned of."""
    merged = merges(raw["label"], label_mapping)
    if merged:
        log.warning("labels merged into one class (listed in %s, label_merges): %s", report, describe_merges(merged))
    return raw.assign(label=apply_mapping(raw["label"], label_mapping)), merged


def class_weights(label_ids: np.ndarray, n_classes: int) -> list[float]:
    counts = np.bincount(label_ids, minlength=n_classes).astype(float)
    return (len(label_ids) / (n_classes * np.maximum(counts, 1))).round(6).tolist()


def preprocess(cfg: PreprocessConfig, raw_path: Path, out_dir: Path, label_mapping: dict[str, str] | None = None) -> dict:
    """Step: clean, label-encode, sample and split; write train/test parquet, label map and report.
    `label_mapping`: raw label -> class, from the validation report (tuneline.classification.labels)."""
    raw, info = read_raw(raw_path)
    raw, merged = merge_labels(raw, label_mapping or {}, out_dir / "report.json")
    df, counts = clean_frame(raw, cfg, lossy_source=info.get("encoding") == "latin-1")
    labels = sorted(df["label"].unique())
    label_map = {label: i for i, label in enumerate(labels)}
    df["label_id"] = df["label"].map(label_map).astype(int)
    df = stratified_sample(df, cfg.sample_size, cfg.seed)
    counts["rows_sampled"] = int(len(df))
    train, test = split(df, cfg)
    train, test, counts["dropped_leaked_from_test"] = check_leakage(train, test, cfg, source_of(info) or str(raw_path))
    counts.update(rows_train=int(len(train)), rows_test=int(len(test)))
    report = {
        "counts": counts,
        "labels": labels,
        "label_merges": merged,
        "class_balance_train": {l: int(n) for l, n in train["label"].value_counts().sort_index().items()},
        "class_balance_test": {l: int(n) for l, n in test["label"].value_counts().sort_index().items()},
        "class_weights": class_weights(train["label_id"].to_numpy(), len(labels)),
        "encoding": info.get("encoding"),
    }
    if train.empty or test.empty:
        raise ValueError(f"{raw_path}: the {'train' if train.empty else 'test'} split is empty after cleaning")
    keep = [c for c in ("text", "label", "label_id", "group") if c in df.columns]
    write_processed(out_dir, train[keep].reset_index(drop=True), test[keep].reset_index(drop=True), label_map, report)
    log.info("preprocess: %s", counts)
    return report
