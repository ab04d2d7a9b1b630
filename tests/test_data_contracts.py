"""The Great Expectations suite and preprocessing on real files, with exact counts."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import REPO, shared_dataset
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


@pytest.mark.parametrize("fmt", ["csv;", "tsv", "json", "jsonl", "parquet"])
def test_input_formats(tmp_path, fmt):
    df = pd.DataFrame({"body": [f"text {i} about {c}" for c in "ab" for i in range(30)], "y": ["a"] * 30 + ["b"] * 30})
    path = tmp_path / f"in.{fmt.rstrip(';')}"
    if fmt == "csv;":
        df.to_csv(path, sep=";", index=False)  # delimiter detected
    elif fmt == "tsv":
        df.to_csv(path, sep="\t", index=False)
    elif fmt in ("json", "jsonl"):
        df.to_json(path, orient="records", lines=fmt == "jsonl")
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
    # the classes validation would see: numbers compared as numbers; case variants refused unless folded
    label = ["--set", "data.label_column=label"]
    assert main(["pin-labels", "--set", f"data.source={BAD / 'numeric_labels.csv'}", *label]) == 0
    assert load_config(tmp_path / "params.yaml").validate_.labels == ["0", "1"]
    assert main(["pin-labels", "--set", f"data.source={BAD / 'case_only_labels.csv'}", *label]) == 2
    assert load_config(tmp_path / "params.yaml").validate_.labels == ["0", "1"]
    fold = ["--set", "validate.fold_label_case=true"]
    assert main(["pin-labels", "--set", f"data.source={BAD / 'case_only_labels.csv'}", *label, *fold]) == 0
    assert load_config(tmp_path / "params.yaml").validate_.labels == ["Positive", "negative"]


# Files of tests/data/bad that hold what a user's data really holds: each is read into the classes it
# means (labels, {class: {spelling as written: rows}} merged, rows per class) or stops with a clear error.
BAD = REPO / "tests" / "data" / "bad"
CONTRACTS = {
    "numeric labels merge": ("numeric_labels.csv", [], (["0", "1"], {"0": {"0": 15, "0.0": 10}, "1": {" 1 ": 5, "1": 10, "1.0": 10}},
                                                        {"0": 25, "1": 25})),
    "labels with spaces merge": ("label_spaces.csv", [], (["neg", "pos"], {"pos": {" pos ": 5, "pos": 15, "pos ": 5}}, {"neg": 25, "pos": 25})),
    "numbers and words stay apart": ("numbers_and_words.csv", [], (["0", "0.0", "none"], {}, {"0": 25, "0.0": 25, "none": 25})),
    "case variants fail": ("case_only_labels.csv", [], ["differ only in letter case ('Positive' / 'positive')",
                                                        "validate.fold_label_case: true", "column 'label'"]),
    "case variants folded": ("case_only_labels.csv", ["validate.fold_label_case=true"],
                             (["Positive", "negative"], {"Positive": {"Positive": 15, "positive": 10}}, {"Positive": 25, "negative": 25})),
    "case variants folded to the pinned spelling": (
        "case_only_labels.csv", ["validate.fold_label_case=true", "validate.labels=[negative, positive]"],
        (["negative", "positive"], {"positive": {"Positive": 15, "positive": 10}}, {"negative": 25, "positive": 25})),
    "case variants pinned as classes": ("case_only_labels.csv", ["validate.labels=[negative, Positive, positive]", "validate.min_rows_per_class=5"],
                                        (["negative", "Positive", "positive"], {}, {"Positive": 15, "negative": 25, "positive": 10})),
    "a variant outside the pinned labels fails": ("case_only_labels.csv", ["validate.labels=[negative, positive]"],
                                                  ["labels outside validate.labels", "'Positive'"]),
    "numbers are not text": ("numeric_text.csv", [], ["numeric_text.csv", "95% or more of the texts are numbers", "column 'text'",
                                                      "50 unexpected (100.00%) of 50 rows"]),
    "emoji and symbols are text": ("emoji_text.csv", [], (["neg", "pos"], {}, {"neg": 56, "pos": 56})),
    "a JSON array of records": ("records.json", [], (["0", "1"], {"1": {"1": 12, "1.0": 13}}, {"0": 25, "1": 25})),
    "a JSON object is not records": ("object_not_records.json", [], ["object_not_records.json", "holds a JSON object",
                                                                    "not an array of records", "under key 'data'"]),
    "a JSON array of arrays": ("array_of_arrays.json", [], ["item 0 of the JSON array is an array", "not a record"]),
}


@pytest.mark.parametrize("case", list(CONTRACTS))
def test_data_contract_files(case, tmp_path, caplog):
    from tuneline.expectations import DataValidationError
    from tuneline.tables import DataError

    name, overrides, expected = CONTRACTS[case]
    args = [f"data.source={BAD / name}", "data.label_column=label", "data.confidence_column=null", *overrides]
    if isinstance(expected, list):  # a clear error naming what is wrong
        with pytest.raises((DataError, DataValidationError)) as err:
            prepare(tmp_path, args)
        for fragment in expected:
            assert fragment in str(err.value), str(err.value)
        assert not (tmp_path / "data/processed").exists()
        return
    labels, merged, per_class = expected
    with caplog.at_level("WARNING", logger="tuneline.classification.preprocess"):
        report, _ = prepare(tmp_path, args)
    processed = json.loads((tmp_path / "data/processed/report.json").read_text())
    assert report["success"] and report["labels"] == labels and report["label_merges"] == merged
    assert processed["label_merges"] == merged
    assert sorted(json.loads((tmp_path / "data/processed/label_map.json").read_text())) == sorted(per_class)
    both = pd.concat([pd.read_parquet(tmp_path / f"data/processed/{s}.parquet") for s in ("train", "test")])
    assert both["label"].value_counts().to_dict() == per_class
    warned = [r.getMessage() for r in caplog.records if "labels merged" in r.getMessage()]
    assert bool(warned) == bool(merged)  # every merge is warned of, with each spelling and its rows
    for spellings in merged.values():
        assert all(f"{raw!r} ({n} rows)" in warned[0] for raw, n in spellings.items()), warned


def test_a_foreign_error_in_a_step_names_the_step_its_files_and_column(tmp_path):
    """Emoji-only texts are valid, but TF-IDF finds no terms in them: scikit-learn's error comes back
    as the step's, naming the files it read and the text column, the original kept as its cause."""
    from tuneline.classification.selection import BASELINE
    from tuneline.pipeline.stages import StageError
    from tuneline.storage import write_json

    args = [f"data.source={BAD / 'emoji_text.csv'}", "data.label_column=label", "data.confidence_column=null"]
    prepare(tmp_path, args)
    config = load_config(None, args)
    write_json(tmp_path / config.paths.selection, {"candidates": [BASELINE], "skipped": [], "metric": "f1_macro"})
    with pytest.raises(StageError) as err:
        run_stage("crossval", config, tmp_path)
    message = str(err.value)
    assert message.startswith("crossval failed on data/processed/train.parquet, data/processed/label_map.json"), message
    assert "(column 'text' (data.text_column)): ValueError: empty vocabulary" in message
    cause = err.value.__cause__
    tb = cause.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    assert type(cause) is ValueError and "sklearn" in tb.tb_frame.f_code.co_filename
    assert not (tmp_path / "data/cv").exists()
