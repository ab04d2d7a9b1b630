"""Promotion: a pure decision (testable without a server) and the alias moves that apply it."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

CHAMPION, PREVIOUS = "champion", "previous"


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    metric: str
    candidate: float
    champion: Optional[float]

    def to_dict(self) -> dict:
        return asdict(self)


def decide(metric: str, candidate: float, champion: Optional[float], min_delta: float = 0.0) -> Decision:
    """Promote when there is no champion, or the candidate beats it by at least `min_delta`."""
    if champion is None:
        return Decision(True, "no current champion", metric, candidate, None)
    delta = candidate - champion
    if delta > 0 and delta >= min_delta:
        return Decision(True, f"{metric} {candidate:.4f} beats champion {champion:.4f} by {delta:+.4f}", metric, candidate, champion)
    return Decision(
        False, f"{metric} {candidate:.4f} does not beat champion {champion:.4f} by more than min_delta={min_delta}", metric, candidate, champion
    )
