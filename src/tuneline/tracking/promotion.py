"""Champion/challenger promotion against a registry: re-score the champion on the current test
split, run the gate, move aliases (and mirrored stages) under a lock so racing runs stay consistent.
"""
from __future__ import annotations

import getpass
import logging
from datetime import datetime, timezone
from typing import Callable, Optional

import pandas as pd

from tuneline.tracking import runs as tracking
from tuneline.tracking.gate import CHALLENGER, CHAMPION, PREVIOUS, Decision

log = logging.getLogger(__name__)


def predict_labels(uri: str, model_uri: str, texts: list[str]) -> list[str]:
    """Batch predictions of a registered model (pyfunc), with the tracking URI scoped to the call."""
    with tracking.scoped(uri) as mlflow:
        model = mlflow.pyfunc.load_model(model_uri)
    return model.predict(pd.DataFrame({"text": texts}))["label"].astype(str).tolist()


class PromotionError(RuntimeError):
    """The candidate and the champion cannot be compared (another method, other rows): say so, never guess."""


def promote_with(uri: str, name: str, version: str, metric: str, decide: Callable[[Optional[str]], dict],
                 mirror_stages: bool = True, force: bool = False, reason: Optional[str] = None) -> dict:
    """The promotion every task shares, under the registry lock: `decide(champion version or None)` is the
    task's gate; a promotion moves `champion` (the old one becomes `previous`, a matching `challenger` is
    cleared), a refusal makes `version` the `challenger`; aliases are mirrored as stages when asked."""
    with tracking.registry_lock(uri, name):
        repaired = repair(uri, name, mirror_stages)
        current = tracking.alias_version(uri, name, CHAMPION)
        if current == version:
            decision = Decision(False, f"version {version} is already champion", metric, None, None).to_dict()
        else:
            decision = decide(current)
            if force and not decision["promote"]:
                if not reason:
                    raise ValueError("--force needs --reason: say why the gate is overridden")
                decision |= {"promote": True, "forced": True, "forced_by": getpass.getuser(), "force_reason": reason,
                             "reason": f"FORCED by {getpass.getuser()}: {reason} (gate said: {decision['reason']})"}
            if decision["promote"]:
                if current is not None:
                    tracking.client(uri).set_registered_model_alias(name, PREVIOUS, current)
                if tracking.alias_version(uri, name, CHALLENGER) == version:
                    tracking.delete_alias(uri, name, CHALLENGER)
                _crown(uri, name, version, current, mirror_stages)
            else:
                tracking.client(uri).set_registered_model_alias(name, CHALLENGER, version)
                if mirror_stages:
                    tracking.mirror_stage(uri, name, version, "Staging")
        decision |= {"version": version, "previous_champion": current, "repaired": repaired,
                     "champion_version": tracking.alias_version(uri, name, CHAMPION),
                     "decided_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        tracking.set_version_tags(uri, name, version, {
            "promotion.promoted": str(decision["promote"]).lower(), "promotion.reason": decision["reason"][:500],
        } | floor_tags(decision))
    log.info("promotion of %s v%s: %s", name, version, decision["reason"])
    return decision


def floor_tags(decision: dict) -> dict[str, str]:
    """The floor's test (tracking.gate.apply_floor) as version tags: what a consumer of the version
    (RL against a reward model) checks before trusting it."""
    if "floor_p_value" not in decision:
        return {}
    return {"gate.metric": decision["metric"], "gate.value": f"{decision['candidate']:.6f}", "gate.floor": f"{decision['floor']:.6f}",
            "gate.floor_p_value": f"{decision['floor_p_value']:.6g}", "gate.floor_test": decision["floor_test"],
            "gate.floor_alpha": str(decision["floor_alpha"]), "gate.above_floor": str(decision["above_floor"]).lower()}


def _crown(uri: str, name: str, version: str, demoted: Optional[str], mirror: bool) -> None:
    """`version` becomes the champion; with `mirror`, it is Production and the `demoted` one Archived.
    The alias moves first: a kill before the stages follow is what `repair` mends."""
    tracking.client(uri).set_registered_model_alias(name, CHAMPION, version)
    tracking.fault("after-alias")
    if mirror:
        tracking.mirror_stage(uri, name, version, "Production")
        if demoted is not None:
            tracking.mirror_stage(uri, name, demoted, "Archived")


def repair(uri: str, name: str, mirror: bool = True) -> list[str]:
    """Under the registry lock, after a promotion or rollback killed between its writes: the champion is
    Production (with `mirror`) and no other version is, and no other alias names it. Returns (and logs) the fixes."""
    if (champion := tracking.alias_version(uri, name, CHAMPION)) is None:
        return []
    fixes = []
    for alias in (CHALLENGER, PREVIOUS):
        if tracking.alias_version(uri, name, alias) == champion:
            tracking.delete_alias(uri, name, alias)
            fixes.append(f"cleared alias {alias!r}, which named champion version {champion}")
    if mirror:
        stages = {str(v.version): v.current_stage for v, _ in tracking.list_versions(uri, name)}
        if stages.get(champion) != "Production":
            tracking.mirror_stage(uri, name, champion, "Production")
            was = stages.get(champion) if stages.get(champion) not in (None, "", "None") else "without a stage"
            fixes.append(f"champion version {champion} was {was}, now Production")
        for v, stage in stages.items():
            if stage == "Production" and v != champion:
                tracking.mirror_stage(uri, name, v, "Archived")
                fixes.append(f"version {v} was Production but is not champion, now Archived")
    for fix in fixes:
        log.warning("repaired %s: %s (an earlier promotion stopped half-way)", name, fix)
    return fixes


def rollback(uri: str, name: str, mirror: bool = True) -> dict:
    """champion ← previous; the demoted version is archived and `previous` is cleared."""
    with tracking.registry_lock(uri, name):
        current = tracking.alias_version(uri, name, CHAMPION)
        if (previous := tracking.alias_version(uri, name, PREVIOUS)) is None:
            raise ValueError(f"{name}: no 'previous' alias to roll back to (champion is {current})")
        _crown(uri, name, previous, current, mirror)
        tracking.delete_alias(uri, name, PREVIOUS)
        if current is not None:
            tracking.set_version_tags(uri, name, current, {"rolled_back_by": getpass.getuser()})
    log.info("rolled back %s: champion %s -> %s", name, current, previous)
    return {"champion": previous, "demoted": current}
