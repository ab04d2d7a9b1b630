"""Classification metrics (scikit-learn) and their summaries across folds."""
from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn import metrics as skm

def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    n_classes = proba.shape[1]
    y_pred = proba.argmax(1)
    labels = list(range(n_classes))
    p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    return {"accuracy": float(skm.accuracy_score(y_true, y_pred)),
            "loss": float(skm.log_loss(y_true, np.clip(proba, 1e-12, 1.0), labels=labels)),
            "precision_macro": float(p), "recall_macro": float(r), "f1_macro": float(f), "roc_auc": roc_auc(y_true, proba)}


def roc_auc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Macro one-vs-rest ROC-AUC; NaN when a class is missing from y_true (AUC is undefined)."""
    n_classes = proba.shape[1]
    if len(np.unique(y_true)) < n_classes:
        return float("nan")
    if n_classes == 2:
        return float(skm.roc_auc_score(y_true, proba[:, 1]))
    p = proba / proba.sum(1, keepdims=True)  # sklearn requires rows summing to 1 exactly
    return float(skm.roc_auc_score(y_true, p, multi_class="ovr", average="macro", labels=list(range(n_classes))))


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str]) -> str:
    return skm.classification_report(y_true, y_pred, labels=list(range(len(names))), target_names=list(names), digits=4, zero_division=0)


def per_class_metrics(y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str]) -> dict[str, dict[str, float]]:
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=list(range(len(names))), zero_division=0)
    return {n: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])} for i, n in enumerate(names)}


def summarize(fold_metrics: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, sample std and a t-based 95% confidence interval of each metric across folds."""
    from scipy import stats

    k = len(fold_metrics)
    out = {}
    for name in fold_metrics[0]:
        values = np.array([m[name] for m in fold_metrics], dtype=float)
        mean, std = float(values.mean()), float(values.std(ddof=1)) if k > 1 else 0.0
        half = float(stats.t.ppf(0.975, k - 1) * std / math.sqrt(k)) if k > 1 else 0.0
        out[name] = {"mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half}
    return out


def majority_rate(y: np.ndarray) -> float:
    return float(np.bincount(y).max() / len(y))


@contextlib.contextmanager
def _figure(path: Path, *grid: int, figsize: tuple[float, float]):
    """A matplotlib figure (off-screen) saved to `path` when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*grid, figsize=figsize)
    yield axes
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str], path: Path, title: str) -> None:
    with _figure(path, figsize=(1.6 * len(names) + 2.5, 1.4 * len(names) + 2)) as ax:
        skm.ConfusionMatrixDisplay.from_predictions(
            y_true, y_pred, labels=list(range(len(names))), display_labels=list(names), ax=ax, colorbar=False, cmap="Blues"
        )
        ax.set_title(title)


def plot_learning_curves(history: list[dict], path: Path) -> None:
    """Per-epoch training loss, and validation loss/macro-F1 when early stopping held rows out."""
    epochs = [h["epoch"] for h in history]
    with _figure(path, 1, 2, figsize=(10, 4)) as (ax1, ax2):
        ax1.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train loss")
        if "val_loss" in history[0]:
            ax1.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation loss")
            ax2.plot(epochs, [h["val_f1_macro"] for h in history], marker="o", label="validation macro-F1")
            ax2.plot(epochs, [h["val_accuracy"] for h in history], marker="o", label="validation accuracy")
        ax1.set_xlabel("epoch"), ax2.set_xlabel("epoch"), ax1.legend(), ax2.legend()
        ax1.set_title("loss"), ax2.set_title("validation metrics")


def corrected_ttest(a: Sequence[float], b: Sequence[float], n_train: float, n_test: float) -> dict[str, float]:
    """Nadeau & Bengio's corrected resampled t-test of paired fold scores a vs b (two-sided).

    The folds' training sets overlap, so the fold differences are correlated and a plain paired
    t-test is anti-conservative; the correction inflates the variance by n_test/n_train."""
    from scipy import stats

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    k = len(d)
    mean = float(d.mean())
    var = float(d.var(ddof=1)) if k > 1 else 0.0
    denom = math.sqrt((1.0 / k + n_test / n_train) * var) if var > 0 else 0.0
    if denom == 0.0:
        return {"diff": mean, "t": math.copysign(math.inf, mean) if mean else 0.0, "p": 0.0 if mean else 1.0}
    t = mean / denom
    return {"diff": mean, "t": float(t), "p": float(2 * stats.t.sf(abs(t), k - 1))}
