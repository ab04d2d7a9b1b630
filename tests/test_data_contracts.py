"""The Great Expectations suite and preprocessing on real files, with exact counts."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import shared_dataset
from tuneline.config import load_config
from tuneline.pipeline.shell import run_stage

pytestmark = pytest.mark.data


def prepare(root, overrides):
    config = load_config(None, overrides)
    for name in ("ingest", "validate", "preprocess"):
        run_stage(name, config, root)
    report = json.loads((root / "data/validation/report.json").read_text())
    counts = json.loads((root / "data/processed/report.json").read_text())["counts"]
    return report, counts


def test_default_tweets(tmp_path):
    report, counts = prepare(tmp_path, [])
    assert report["success"] and report["labels"] == ["negative", "neutral", "positive"]
    assert counts == {
        "rows_in": 38158, "dropped_missing_label": 0, "dropped_empty_text": 0,
        "dropped_conflicting_labels": 1384, "dropped_duplicates": 895, "rows_clean": 35879,
        "rows_sampled": 35879, "dropped_leaked_from_test": 0, "rows_train": 28703, "rows_test": 7176,
    }
    train = pd.read_parquet(tmp_path / "data/processed/train.parquet")
    # the corpus' lossy mojibake is repaired, not carried into training text
    assert not train["text"].str.contains("[\u0080-\u00ff]{2,}", regex=True).any()
    assert train["text"].str.contains("http").any() and not train["text"].str.contains("http://").any()


# Each dataset with its own test split, and counts checked independently with pandas:
# SST-2: 9 repeated sentences in train; 2 test sentences that are also in train.
# TREC-6: 72 repeated questions in train, one question with two labels, 10 more test questions in train.
SPLIT_DATASETS = {
    "sst2": (["0", "1"], {
        "rows_in": 8741, "dropped_missing_label": 0, "dropped_empty_text": 0,
        "dropped_conflicting_labels": 0, "dropped_duplicates": 9, "rows_clean": 8732,
        "rows_sampled": 8732, "dropped_leaked_from_test": 2, "rows_train": 6911, "rows_test": 1819,
    }),
    "trec6": (["0", "1", "2", "3", "4", "5"], {
        "rows_in": 5952, "dropped_missing_label": 0, "dropped_empty_text": 0,
        "dropped_conflicting_labels": 2, "dropped_duplicates": 72, "rows_clean": 5878,
        "rows_sampled": 5878, "dropped_leaked_from_test": 10, "rows_train": 5379, "rows_test": 489,
    }),
}


@pytest.mark.parametrize("name", sorted(SPLIT_DATASETS))
def test_dataset_with_its_own_test_split(tmp_path, name):
    d = shared_dataset(name)
    labels, expected = SPLIT_DATASETS[name]
    report, counts = prepare(tmp_path, [
        f"data.source={d / 'train.csv'}", f"data.test_source={d / 'test.csv'}", "data.label_column=label",
        "data.confidence_column=null", "preprocess.mask_mentions=false", "preprocess.mask_urls=false",
        "preprocess.leakage=drop",
    ])
    assert report["success"] and report["labels"] == labels
    assert counts == expected


def test_given_test_split_with_leakage_fails_by_default(tmp_path):
    d = shared_dataset("sst2")
    from tuneline.classification.preprocess import LeakageError

    with pytest.raises(LeakageError, match=r"test.csv.*2 test rows of column 'text' also appear"):
        prepare(tmp_path, [f"data.source={d / 'train.csv'}", f"data.test_source={d / 'test.csv'}",
                           "data.label_column=label", "data.confidence_column=null"])


@pytest.mark.parametrize("fmt", ["csv;", "tsv", "jsonl", "parquet"])
def test_input_formats(tmp_path, fmt):
    df = pd.DataFrame({"body": [f"text {i} about {c}" for c in "ab" for i in range(30)], "y": ["a"] * 30 + ["b"] * 30})
    path = tmp_path / f"in.{fmt.rstrip(';')}"
    if fmt == "csv;":
        df.to_csv(path, sep=";", index=False)  # delimiter detected
    elif fmt == "tsv":
        df.to_csv(path, sep="\t", index=False)
    elif fmt == "jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path)
    report, counts = prepare(tmp_path, [f"data.source={path}", "data.text_column=body", "data.label_column=y"])
    assert report["success"] and counts["rows_clean"] == 60 and counts["rows_test"] == 12


def test_leakage_fail_or_drop(tmp_path):
    train = pd.DataFrame({"text": [f"row {i}" for i in range(40)] * 2, "label": ["a", "b"] * 40})
    train.to_csv(tmp_path / "dup.csv", index=False)
    base = [f"data.source={tmp_path / 'dup.csv'}", "data.label_column=label", "preprocess.drop_duplicates=false",
            "validate.max_duplicate_fraction=0.9"]
    from tuneline.classification.preprocess import LeakageError

    with pytest.raises(LeakageError, match=r"dup.csv: \d+ test rows of column 'text' also appear"):
        prepare(tmp_path, base)
    assert not (tmp_path / "data/processed").exists()
    _, counts = prepare(tmp_path, base + ["preprocess.leakage=drop"])
    assert counts["dropped_leaked_from_test"] > 0
    tr = pd.read_parquet(tmp_path / "data/processed/train.parquet")
    te = pd.read_parquet(tmp_path / "data/processed/test.parquet")
    assert not set(tr["text"]) & set(te["text"])


def test_pin_labels_writes_the_inferred_set_into_params(tmp_path, monkeypatch):
    import shutil

    from conftest import REPO
    from tuneline.cli import main

    pd.DataFrame({"text": ["a", "b", "c"], "sentiment": ["pos", "neg", "neu"]}).to_csv(tmp_path / "d.csv", index=False)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    assert main(["pin-labels", "--set", f"data.source={tmp_path / 'd.csv'}"]) == 0
    assert load_config(tmp_path / "params.yaml").validate_.labels == ["neg", "neu", "pos"]
