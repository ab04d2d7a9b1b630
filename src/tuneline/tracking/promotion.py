"""Champion/challenger promotion against a registry: re-score the champion on the current test
split, run the gate, move aliases (and mirrored stages) under a lock so racing runs stay consistent.
"""
from __future__ import annotations

import getpass
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd

from tuneline.tracking import runs as tracking
from tuneline.config import PromoteConfig
from tuneline.tracking.gate import CHALLENGER, CHAMPION, PREVIOUS, Decision, GateConfig, gate

log = logging.getLogger(__name__)


def predict_labels(uri: str, model_uri: str, texts: list[str]) -> list[str]:
    """Batch predictions of a registered model (pyfunc), with the tracking URI scoped to the call."""
    with tracking._mlflow(uri) as mlflow:
        model = mlflow.pyfunc.load_model(model_uri)
    return model.predict(pd.DataFrame({"text": texts}))["label"].astype(str).tolist()


def _ids(labels: list[str], label_map: dict[str, int]) -> np.ndarray:
    return np.array([label_map.get(l, -1) for l in labels])  # an unknown label is simply wrong


def gate_config(cfg: PromoteConfig) -> GateConfig:
    return GateConfig(cfg.metric, cfg.min_delta, cfg.alpha, cfg.max_class_regression, cfg.bootstrap_samples)


def promote_version(
    uri: str, name: str, version: str, test: pd.DataFrame, label_map: dict[str, int], cfg: PromoteConfig,
    candidate_labels: Optional[list[str]] = None, force: bool = False, reason: Optional[str] = None,
) -> dict:
    """Gate `version` against the current champion on `test` and apply the decision."""
    names = sorted(label_map, key=label_map.get)
    y = _ids(test["label"].astype(str).tolist(), label_map)
    texts = test["text"].astype(str).tolist()

    def decide(current: Optional[str]) -> dict:
        labels = candidate_labels if candidate_labels is not None else predict_labels(uri, f"models:/{name}/{version}", texts)
        champion_pred, error = None, None
        if current is not None:
            try:
                champion_pred = _ids(predict_labels(uri, f"models:/{name}/{current}", texts), label_map)
            except Exception as exc:  # missing artifacts, unloadable model: the gate decides what that means
                error = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("champion version %s could not be re-scored: %s", current, error)
        return gate(gate_config(cfg), y, _ids(labels, label_map), champion_pred, names, error).to_dict()

    return promote_with(uri, name, str(version), cfg.metric, decide, cfg.mirror_stages, force, reason)


def promote_with(uri: str, name: str, version: str, metric: str, decide: Callable[[Optional[str]], dict],
                 mirror_stages: bool = True, force: bool = False, reason: Optional[str] = None) -> dict:
    """The promotion every task shares. Under the registry lock: `decide(champion version or None)`
    gates `version` against the current champion (the task's own scores and gate); a promotion moves
    `champion` (the old one becomes `previous`, a matching `challenger` is cleared), a refusal makes
    `version` the `challenger`; aliases are mirrored as stages when asked."""
    with tracking.registry_lock(uri, name):
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
                _apply(uri, name, version, current, mirror_stages)
            else:
                tracking.set_alias(uri, name, CHALLENGER, version)
                if mirror_stages:
                    tracking.mirror_stage(uri, name, version, "Staging")
        decision |= {"version": version, "previous_champion": current,
                     "champion_version": tracking.alias_version(uri, name, CHAMPION),
                     "decided_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        tracking.set_version_tags(uri, name, version, {
            "promotion.promoted": str(decision["promote"]).lower(), "promotion.reason": decision["reason"][:500],
        })
    log.info("promotion of %s v%s: %s", name, version, decision["reason"])
    return decision


def _apply(uri: str, name: str, version: str, current: Optional[str], mirror: bool) -> None:
    if current is not None:
        tracking.set_alias(uri, name, PREVIOUS, current)
    tracking.set_alias(uri, name, CHAMPION, version)
    if tracking.alias_version(uri, name, CHALLENGER) == version:
        tracking.delete_alias(uri, name, CHALLENGER)
    if mirror:
        tracking.mirror_stage(uri, name, version, "Production")
        if current is not None:
            tracking.mirror_stage(uri, name, current, "Archived")


def rollback(uri: str, name: str, mirror: bool = True) -> dict:
    """champion ← previous; the demoted version is archived and `previous` is cleared."""
    with tracking.registry_lock(uri, name):
        current = tracking.alias_version(uri, name, CHAMPION)
        previous = tracking.alias_version(uri, name, PREVIOUS)
        if previous is None:
            raise ValueError(f"{name}: no 'previous' alias to roll back to (champion is {current})")
        tracking.set_alias(uri, name, CHAMPION, previous)
        tracking.delete_alias(uri, name, PREVIOUS)
        if mirror:
            tracking.mirror_stage(uri, name, previous, "Production")
            if current is not None:
                tracking.mirror_stage(uri, name, current, "Archived")
        if current is not None:
            tracking.set_version_tags(uri, name, current, {"rolled_back_by": getpass.getuser()})
    log.info("rolled back %s: champion %s -> %s", name, current, previous)
    return {"champion": previous, "demoted": current}


def load_test_split(processed_dir: Path) -> tuple[pd.DataFrame, dict[str, int]]:
    from tuneline.storage import read_json

    return pd.read_parquet(processed_dir / "test.parquet"), read_json(processed_dir / "label_map.json")
