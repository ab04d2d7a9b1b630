"""Every branch of the promotion gate, as a pure function (no server)."""
import numpy as np
import pytest

from tuneline.tracking.gate import GateConfig, gate

pytestmark = pytest.mark.unit

LABELS = ["neg", "neu", "pos"]
RNG = np.random.default_rng(7)
Y = np.repeat([0, 1, 2], 200)


def predictions(accuracy: float, seed: int, y=Y) -> np.ndarray:
    """Right on a random `accuracy` share of rows, a wrong class elsewhere."""
    rng = np.random.default_rng(seed)
    right = rng.random(len(y)) < accuracy
    return np.where(right, y, (y + rng.integers(1, 3, len(y))) % 3)


@pytest.mark.parametrize("metric", ["accuracy", "f1_macro"])
def test_first_model_is_promoted(metric):
    d = gate(GateConfig(metric=metric), Y, predictions(0.6, 1), None, LABELS)
    assert d.promote and "first model" in d.reason and d.champion is None


@pytest.mark.parametrize("metric, test", [("accuracy", "mcnemar_exact"), ("f1_macro", "paired_bootstrap")])
def test_clearly_better_is_promoted(metric, test):
    d = gate(GateConfig(metric=metric), Y, predictions(0.85, 1), predictions(0.6, 2), LABELS)
    assert d.promote and d.delta > 0.15 and d.p_value < 0.001 and d.test == test


@pytest.mark.parametrize("metric", ["accuracy", "f1_macro"])
def test_better_but_not_significant_is_not_promoted(metric):
    champion = predictions(0.7, 2)
    candidate = champion.copy()
    flip = np.flatnonzero(candidate != Y)[:3]  # the challenger fixes 3 of 600 rows: a real gain, not significant
    candidate[flip] = Y[flip]
    d = gate(GateConfig(metric=metric), Y, candidate, champion, LABELS)
    assert not d.promote and d.delta > 0 and d.p_value >= 0.05 and "not significant" in d.reason


def test_tie_is_not_promoted():
    p = predictions(0.7, 3)
    d = gate(GateConfig(), Y, p.copy(), p, LABELS)
    assert not d.promote and d.delta == 0 and "ties" in d.reason


def test_worse_is_not_promoted():
    d = gate(GateConfig(), Y, predictions(0.6, 1), predictions(0.8, 2), LABELS)
    assert not d.promote and d.delta < 0 and "worse" in d.reason


def test_min_delta_is_respected():
    d = gate(GateConfig(min_delta=0.5), Y, predictions(0.85, 1), predictions(0.6, 2), LABELS)
    assert not d.promote and "min_delta" in d.reason


def test_one_class_collapsing_blocks_promotion_even_when_the_metric_rises():
    champion = predictions(0.6, 2)
    candidate = Y.copy()
    candidate[Y == 2] = 0  # perfect on two classes, class 'pos' never predicted
    d = gate(GateConfig(metric="accuracy"), Y, candidate, champion, LABELS)
    assert d.delta > 0 and d.p_value < 0.05
    assert not d.promote and "'pos'" in d.reason and d.class_recall_change["pos"] < -0.5


def test_champion_missing_artifacts():
    ok = gate(GateConfig(), Y, predictions(0.8, 1), None, LABELS, champion_error="OSError: no such file")
    assert ok.promote and "cannot be re-scored" in ok.reason
    useless = np.zeros_like(Y)  # no better than always answering the majority class
    bad = gate(GateConfig(), Y, useless, None, LABELS, champion_error="OSError: no such file")
    assert not bad.promote and "majority" in bad.reason


@pytest.mark.parametrize("metric", ["accuracy", "f1_macro", "precision_macro", "recall_macro"])
def test_gate_metrics_equal_scikit_learn(metric):
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    from tuneline.tracking.gate import _per_class, metric_value

    for seed in range(5):
        pred = predictions(0.5 + 0.1 * seed, seed)
        pred[:7] = 2  # skew predictions so some precision/recall terms differ
        pred[7:10] = -1  # a label outside the label map: always wrong
        if metric == "accuracy":
            expected = accuracy_score(Y, pred)
        else:
            fn = {"f1_macro": f1_score, "precision_macro": precision_score, "recall_macro": recall_score}[metric]
            expected = fn(Y, pred, labels=[0, 1, 2], average="macro", zero_division=0)
        assert metric_value(metric, Y, pred, 3) == pytest.approx(expected, abs=1e-12)
        recalls = recall_score(Y, pred, labels=[0, 1, 2], average=None, zero_division=0)
        assert _per_class(Y, pred, 3)[1] == pytest.approx(recalls, abs=1e-12)
