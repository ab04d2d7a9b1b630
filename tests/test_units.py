import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from tuneline.config import PreprocessConfig, TrainConfig, ValidateConfig
from tuneline.classification.labels import apply_mapping, label_mapping, merges
from tuneline.classification.preprocess import clean_frame, clean_text
from tuneline.tracking.gate import decide
from tuneline.storage import atomic_path
from tuneline.classification.head import LinearHead

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("I look at Google\u00d5\u00a2_\u008a\u00ce_\u0086\u00a2s driverless cars", "I look at Google's driverless cars"),
        ("hands #driverless cars_\u00d1_.no thank you", "hands #driverless cars .no thank you"),
        ("crazed &amp; drunk   drivers", "crazed & drunk drivers"),
        ("see http://t.co/abc and www.x.org/y now", "see http and http now"),
        ("@WSJ the idiot, mail me at a@b.com", "@user the idiot, mail me at a@b.com"),
    ],
)
def test_clean_text_repairs_lossy_mojibake_and_masks(raw, expected):
    assert clean_text(raw, PreprocessConfig(), lossy_source=True) == expected


def test_clean_text_keeps_real_accents_from_utf8_sources():
    assert clean_text("Grüße aus Köln", PreprocessConfig(), lossy_source=False) == "Grüße aus Köln"


def test_clean_frame_counts_every_drop():
    df = pd.DataFrame(
        {
            "text": ["good", "Good ", "bad", None, "   ", "meh", "meh", "x", "y"],
            "label": ["pos", "pos", "neg", "neg", "neg", "pos", "neg", None, "neg"],
            "confidence": [1, 1, 1, 1, 1, 1, 1, 1, 0.1],
        }
    )
    out, counts = clean_frame(df, PreprocessConfig(min_confidence=0.5), lossy_source=False)
    assert counts == {
        "rows_in": 9,
        "dropped_missing_label": 1,
        "dropped_empty_text": 2,
        "dropped_low_confidence": 1,
        "dropped_conflicting_labels": 2,
        "dropped_duplicates": 1,
        "rows_clean": 2,
    }
    assert out["text"].tolist() == ["good", "bad"]


@pytest.mark.parametrize("labels, pinned, fold, expected", [
    (["0", "0.0", "-0", "+0.00", "0"], None, False, {"0.0": "0", "-0": "0", "+0.00": "0"}),
    ([" 1 ", "1e0", "1.50", ".5"], None, False, {" 1 ": "1", "1e0": "1", "1.50": "1.5", ".5": "0.5"}),
    (["1.0", "2.0", "1"], ["1.0", "2"], False, {"1": "1.0", "2.0": "2"}),  # pinned spellings name the classes
    (["nan", "1", "1.0", "inf"], None, False, {}),  # nan and inf are words: not every label is a number
    (["Pos", "pos", "pos", "neg "], None, False, {"neg ": "neg"}),  # case variants stay apart (validation fails them)
    (["Pos", "pos", "pos", "neg "], None, True, {"Pos": "pos", "neg ": "neg"}),  # the most frequent spelling
    (["Pos", "pos", "pos"], ["Pos"], True, {"pos": "Pos"}),  # ... unless validate.labels pins one
    (["", "  ", "a", None], None, False, {"  ": ""}),  # blank is missing
])
def test_label_mapping(labels, pinned, fold, expected):
    series = pd.Series(labels, dtype=object)
    mapping = label_mapping(series, pinned, fold)
    assert mapping == expected
    classes = apply_mapping(series, mapping)
    assert classes.isna().sum() == sum(1 for v in labels if v is None or not v.strip())
    for name, spellings in merges(series, mapping).items():  # a class two or more spellings became
        assert len(spellings) > 1 and all(mapping.get(raw, raw) == name for raw in spellings)


@pytest.mark.parametrize("text, numeric", [
    ("42", True), (" -3.5e2 ", True), ("1,234.50", True), ("12%", True), (".5", True),
    ("\U0001F600\U0001F622", False), ("!!! ???", False), ("$$$", False), ("1.2.3 released", False), ("4 stars", False),
])
def test_what_counts_as_a_number_in_a_text_column(text, numeric):
    import re

    from tuneline.classification.validation import NUMERIC_TEXT

    assert bool(re.search(NUMERIC_TEXT, text)) is numeric


@pytest.mark.parametrize("numbers, passes", [(57, False), (56, True)])  # of 60 texts: 95% fails, 93% passes
def test_a_text_column_of_numbers_fails_from_95_percent(numbers, passes):
    from tuneline.classification.validation import NUMERIC_TEXT, validate_frame

    texts = [str(i * 3.5) for i in range(numbers)] + [f"words about item {i}" for i in range(60 - numbers)]
    report = validate_frame(pd.DataFrame({"text": texts, "label": ["a", "b"] * 30}), ValidateConfig())
    check = next(r for r in report["results"] if r["kwargs"].get("regex") == NUMERIC_TEXT)
    assert check["success"] is passes and report["success"] is passes
    assert check["observed"].startswith(f"{numbers} unexpected")


@pytest.mark.parametrize("n_classes", [2, 3])
def test_linear_head_matches_sklearn_probabilities(n_classes, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 8)).astype(np.float32)
    y = rng.integers(0, n_classes, size=300)
    cfg = TrainConfig(class_weight="none")
    head = LinearHead.fit(X, y, n_classes, cfg)
    ref = LogisticRegression(C=cfg.head_c, max_iter=cfg.head_max_iter, random_state=cfg.seed).fit(X, y)
    np.testing.assert_allclose(head.predict_proba(X), ref.predict_proba(X), atol=1e-5)
    head.save(tmp_path / "h.safetensors")
    np.testing.assert_array_equal(LinearHead.load(tmp_path / "h.safetensors").predict_proba(X), head.predict_proba(X))


def test_linear_head_with_two_of_three_labels_in_training_never_predicts_the_third():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 6))
    y = 2 * rng.integers(0, 2, size=200)  # label ids 0 and 2 only: sklearn fits one binary logit
    cfg = TrainConfig(class_weight="none")
    proba = LinearHead.fit(X, y, 3, cfg).predict_proba(X)
    ref = LogisticRegression(C=cfg.head_c, max_iter=cfg.head_max_iter, random_state=cfg.seed).fit(X, y)
    np.testing.assert_allclose(proba[:, [0, 2]], ref.predict_proba(X), atol=1e-5)
    assert proba[:, 1].max() < 1e-6


def test_decide_branches():
    assert decide("f1_macro", 0.7, None).promote
    assert decide("f1_macro", 0.71, 0.70).promote
    assert not decide("f1_macro", 0.70, 0.70).promote
    assert not decide("f1_macro", 0.69, 0.70).promote
    assert not decide("f1_macro", 0.705, 0.70, min_delta=0.01).promote


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out" / "model"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("boom")
    assert not target.exists()
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".ndjson", ".parquet", ".xlsx"])
def test_predictions_are_written_in_the_format_of_the_output_suffix(suffix, tmp_path):
    from tuneline.config import DataConfig
    from tuneline.pipeline.predict import WRITERS, predict_file
    from tuneline.tables import DataError, read_table

    out = tmp_path / f"out{suffix}"
    if suffix not in WRITERS:  # refused before any input is read or model loaded
        with pytest.raises(DataError, match=rf"out\{suffix}: unknown output format '\{suffix}'; use .csv, .tsv, .jsonl"):
            predict_file("sqlite:///unused.db", "models:/m/1", tmp_path / "missing.csv", out, "text", DataConfig())
        return
    df = pd.DataFrame({"text": ["a, b", "c\td \"e\""], "predicted_label": ["pos", "neg"], "p_pos": [0.25, 0.75]})
    WRITERS[suffix](df, out)
    back, _ = read_table(DataConfig(), out)
    pd.testing.assert_frame_equal(back.reset_index(drop=True).astype(str), df.astype(str))


def test_sample_and_split_groups_by_key_and_refuses_a_key_on_both_sides_or_an_empty_side():
    from tuneline.tables import sample_and_split

    df = pd.DataFrame({"k": [f"g{i // 3}" for i in range(60)], "v": range(60)})
    counts: dict = {}
    train, test = sample_and_split(df, "k", PreprocessConfig(sample_size=30, test_size=0.25), ValueError, "groups", counts)
    assert counts["rows_sampled"] == 30 and len(train) + len(test) == 30
    assert not set(train["k"]) & set(test["k"]) and len(test) > 0
    given = df.assign(split=["train"] * 59 + ["test"])  # g19 is on both sides of the given split
    with pytest.raises(ValueError, match="1 groups in both train and test"):
        sample_and_split(given, "k", PreprocessConfig(), ValueError, "groups", {})
    with pytest.raises(ValueError, match="the train split is empty"):
        sample_and_split(df.assign(split="test"), "k", PreprocessConfig(), ValueError, "groups", {})
