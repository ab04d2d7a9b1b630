import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from tuneline.config import PreprocessConfig, TrainConfig
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
