"""Promotion gate (the rule: README, "Registry: promotion, rollback, batch prediction"): a pure function
of both models' predictions on the SAME test rows, so every branch is testable without a server. A task
whose metric has a level that means "learnt nothing" (0.5 for a pairwise accuracy, the base model's
reward) also gives a `Floor` the candidate must be significantly above, champion or not.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Optional, Sequence

import numpy as np

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"


@dataclass(frozen=True)
class GateConfig:
    metric: str = "f1_macro"
    min_delta: float = 0.0
    alpha: float = 0.05
    max_class_regression: float = 0.05
    bootstrap_samples: int = 2000
    seed: int = 0


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    metric: str
    candidate: Optional[float]
    champion: Optional[float]
    delta: Optional[float] = None
    p_value: Optional[float] = None
    test: Optional[str] = None
    class_recall_change: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Floor:
    """A level the candidate must beat significantly: `p_value` of a one-sided test that it does."""
    value: float
    p_value: float
    test: str
    what: str  # "chance", "the base model"


def pairwise_floor(wins: np.ndarray, chance: float = 0.5) -> Floor:
    """One-sided exact sign test that a pairwise accuracy (per pair: 1 right, 0 wrong, 0.5 tie) is
    above `chance`: among untied pairs, are right rankings more frequent than `chance`? (A bootstrap
    would call 3 of 3 significant; the exact test says p=0.125.)"""
    from scipy.stats import binomtest

    wins = np.asarray(wins, float)
    right, untied = int((wins == 1).sum()), int((wins != 0.5).sum())
    p = 1.0 if untied == 0 else float(binomtest(right, untied, chance, alternative="greater").pvalue)
    return Floor(chance, p, "sign_test_exact", "chance")


def apply_floor(decision: dict, floor: Optional[Floor], alpha: float) -> dict:
    """`decision` with the floor's test recorded; refused when the candidate is not significantly above it."""
    if floor is None:
        return decision
    above = floor.p_value < alpha
    out = decision | {"floor": floor.value, "floor_p_value": floor.p_value, "floor_test": floor.test,
                      "floor_what": floor.what, "above_floor": above, "floor_alpha": alpha}
    if decision["promote"] and not above:
        cand = decision.get("candidate")
        value = f"{cand:.4f}" if isinstance(cand, (int, float)) else str(cand)
        out |= {"promote": False, "reason": f"{decision['metric']} {value} is not significantly above {floor.what} "
                                           f"({floor.value:.4f}): {floor.test} p={floor.p_value:.4f} ≥ alpha {alpha}; not promoted"}
    return out


def _per_class(y: np.ndarray, pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class precision and recall as scikit-learn computes them (zero_division=0; a prediction
    outside the labels, -1, is simply wrong), from one bincount: thousands of bootstrap resamples
    call this, where sklearn's per-call overhead would dominate."""
    valid = pred >= 0
    cm = np.bincount(y[valid] * n_classes + pred[valid], minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    tp = np.diag(cm).astype(float)
    support, predicted = np.bincount(y, minlength=n_classes).astype(float), cm.sum(0).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    return precision, np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)


def metric_value(metric: str, y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """accuracy, or the macro average of f1, precision or recall over the `n_classes` labels."""
    if metric == "accuracy":
        return float((pred == y).mean())
    precision, recall = _per_class(y, pred, n_classes)
    if metric == "precision_macro":
        return float(precision.mean())
    if metric == "recall_macro":
        return float(recall.mean())
    denom = precision + recall
    return float(np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0).mean())


def mcnemar_p(y: np.ndarray, cand: np.ndarray, champ: np.ndarray) -> float:
    """One-sided exact McNemar: among rows where exactly one model is right, is the challenger
    right more often than chance?"""
    from scipy.stats import binomtest

    cand_only = int(((cand == y) & (champ != y)).sum())
    champ_only = int(((cand != y) & (champ == y)).sum())
    if cand_only + champ_only == 0:
        return 1.0
    return float(binomtest(cand_only, cand_only + champ_only, 0.5, alternative="greater").pvalue)


def gate(
    cfg: GateConfig, y: np.ndarray, candidate_pred: np.ndarray, champion_pred: Optional[np.ndarray],
    labels: Sequence[str], champion_error: Optional[str] = None,
) -> Decision:
    """`decide` on the label metric with a paired test on the same rows, then no class's recall may
    drop by more than `max_class_regression`."""
    n = len(labels)
    cand = metric_value(cfg.metric, y, candidate_pred, n)
    if champion_pred is None and champion_error is not None:
        # The registered champion cannot serve; a challenger that beats the majority class replaces it.
        majority = float(np.bincount(y, minlength=n).max() / len(y))
        acc = float((candidate_pred == y).mean())
        ok = acc > majority
        return Decision(ok, f"champion cannot be re-scored ({champion_error}); challenger accuracy {acc:.4f} "
                        f"{'beats' if ok else 'does not beat'} the majority rate {majority:.4f}", cfg.metric, cand, None)
    if champion_pred is None:
        return decide(cfg.metric, cand, None)
    if cfg.metric == "accuracy":
        test, p = "mcnemar_exact", mcnemar_p(y, candidate_pred, champion_pred)
    else:
        stat = lambda rows: metric_value(cfg.metric, rows["y"], rows["pred"], n)  # noqa: E731
        test, p = "paired_bootstrap", paired_bootstrap(
            stat, {"y": y, "pred": candidate_pred}, {"y": y, "pred": champion_pred}, True, cfg.bootstrap_samples, cfg.seed)[0]
    change = _per_class(y, candidate_pred, n)[1] - _per_class(y, champion_pred, n)[1]
    recall_change = {labels[i]: round(float(c), 6) for i, c in enumerate(change)}
    d = replace(decide(cfg.metric, cand, metric_value(cfg.metric, y, champion_pred, n), cfg.min_delta, p_value=p,
                       alpha=cfg.alpha, test=test), class_recall_change=recall_change)
    worst = min(recall_change, key=recall_change.get)
    # a gain large enough to count, significant or not, is refused first for the class it hurts
    if d.delta > 0 and d.delta >= cfg.min_delta and -recall_change[worst] > cfg.max_class_regression:
        return replace(d, promote=False, reason=f"recall of class {worst!r} drops by {-recall_change[worst]:.4f} "
                                                f"(> max_class_regression {cfg.max_class_regression})")
    return d


def paired_bootstrap(stat: Callable[[dict[str, np.ndarray]], float], candidate: dict[str, np.ndarray],
                     champion: dict[str, np.ndarray], higher_is_better: bool, samples: int, seed: int,
                     level: float = 0.95) -> tuple[float, float, float]:
    """One-sided paired bootstrap for any statistic of row-aligned per-row arrays (a macro-F1 of labels and
    predictions, a mean win rate, a token-weighted perplexity): (p, interval low, interval high) of
    stat(candidate) - stat(champion) on `samples` row resamples, the same rows for both. p is the share of
    resamples where the challenger is not better; the interval, the deltas' percentiles."""
    n = len(next(iter(candidate.values())))
    if n == 0 or any(len(v) != n for v in (*candidate.values(), *champion.values())):
        raise ValueError(f"paired test needs the same non-empty rows for both models, got {n} and "
                         f"{sorted({len(v) for v in champion.values()})}")
    rng = np.random.default_rng(seed)
    deltas = np.empty(samples)
    for i in range(samples):
        idx = rng.integers(0, n, n)
        deltas[i] = stat({k: v[idx] for k, v in candidate.items()}) - stat({k: v[idx] for k, v in champion.items()})
    not_better = int(np.sum((deltas if higher_is_better else -deltas) <= 0))
    tail = (1 - level) / 2 * 100
    return (not_better + 1) / (samples + 1), float(np.percentile(deltas, tail)), float(np.percentile(deltas, 100 - tail))


def decide(metric: str, candidate: float, champion: Optional[float], min_delta: float = 0.0, *, higher_is_better: bool = True,
           p_value: Optional[float] = None, alpha: float = 0.05, test: Optional[str] = None) -> Decision:
    """The score rule every task's gate shares: promote when there is no champion, or the candidate is
    better by more than 0 and at least `min_delta` and — when a paired test's `p_value` is given —
    significantly so at `alpha`."""
    if champion is None:
        return Decision(True, "first model: no current champion", metric, candidate, None)
    delta = candidate - champion
    gain = delta if higher_is_better else -delta
    common = dict(metric=metric, candidate=candidate, champion=champion, delta=delta, p_value=p_value, test=test)
    change = f"Δ {delta:+.4f}, {'higher' if higher_is_better else 'lower'} is better"
    if gain <= 0 or gain < min_delta:
        verdict = "ties" if gain == 0 else ("is worse than" if gain < 0 else f"beats by less than min_delta={min_delta}")
        return Decision(False, f"{metric} {candidate:.4f} {verdict} champion {champion:.4f} ({change})", **common)
    if p_value is not None and p_value >= alpha:
        return Decision(False, f"{metric} {candidate:.4f} vs {champion:.4f} ({change}) is not significant: "
                        f"{test} p={p_value:.4f} ≥ alpha {alpha}", **common)
    significance = "" if p_value is None else f", {test} p={p_value:.4f}"
    return Decision(True, f"{metric} {candidate:.4f} beats champion {champion:.4f} ({change}{significance})", **common)


def paired_rows_gate(metric: str, statistic: Callable[[dict[str, np.ndarray]], float], candidate: dict[str, np.ndarray],
                     champion: Optional[dict[str, np.ndarray]], *, higher_is_better: bool, min_delta: float, alpha: float,
                     samples: int, seed: int, champion_error: Optional[str] = None, floor: Optional[Floor] = None) -> dict:
    """The gate of a task scored per held-out row (an LLM's per-pair wins or token log-probs, a summary's
    ROUGE-L): `decide` on `statistic` of the rows, with a one-sided paired bootstrap over the rows both
    models were scored on. No champion: the first model is promoted, unless a champion exists that could
    not be re-scored (`champion_error`): it is never replaced blind. A `floor` (apply_floor) holds either way."""
    if champion is None:
        d = decide(metric, statistic(candidate), None).to_dict() | {"champion_rescored_on_rows": None}
        if champion_error is not None:
            d |= {"promote": False, "reason": f"the champion cannot be re-scored ({champion_error}); not promoted"}
        return apply_floor(d, floor, alpha)
    p_value = paired_bootstrap(statistic, candidate, champion, higher_is_better, samples, seed)[0]
    d = decide(metric, statistic(candidate), statistic(champion), min_delta, higher_is_better=higher_is_better,
               p_value=p_value, alpha=alpha, test="paired_bootstrap").to_dict()
    n = len(next(iter(candidate.values())))
    return apply_floor(d | {"reason": d["reason"] + " on the same held-out rows", "champion_rescored_on_rows": n}, floor, alpha)
