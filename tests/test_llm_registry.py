"""LLM registration and promotion through the registry owner every task shares (tuneline.tracking.runs,
tuneline.tracking.promotion): registration keys, the registry lock and the champion/challenger aliases.
Real MLflow on a SQLite store; per-row scores stand in for re-scoring a champion (no model runs)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from llm_fixtures import registrable_dpo_project

pytestmark = pytest.mark.unit


def _versions(uri: str, name: str) -> list[str]:
    from mlflow import MlflowClient

    return sorted(str(v.version) for v in MlflowClient(uri).search_model_versions(f"name = '{name}'"))


def test_a_retried_llm_register_adds_no_version(tmp_path):
    from tuneline.tracking import runs as tracking
    from tuneline.pipeline.shell import run_stage

    config = registrable_dpo_project(tmp_path)
    first = run_stage("register", config, tmp_path)
    retried = run_stage("register", config, tmp_path)
    uri = tracking.tracking_uri(tmp_path)
    assert first["registered_model_name"] == "tuneline-dpo" and _versions(uri, "tuneline-dpo") == ["1"]
    assert retried["reused"] is True and (retried["version"], retried["run_id"]) == (first["version"], first["run_id"])
    assert retried["cv_metrics"] == pytest.approx(first["cv_metrics"]) and retried["method"] == "dpo"
    version = tracking.client(uri).get_model_version("tuneline-dpo", "1")
    assert version.tags[tracking.REGISTRATION_KEY] and version.tags["method"] == "dpo"
    # the CV summary is tuneline.metrics.summarize's: sample std and a t interval, logged as for the classifier
    metrics = tracking.client(uri).get_run(first["run_id"]).data.metrics
    assert metrics["cv_preference_accuracy_ci95_low"] < metrics["cv_preference_accuracy_mean"] < metrics["cv_preference_accuracy_ci95_high"]


def _registry(tmp_path, n: int) -> tuple[str, str]:
    """A SQLite registry holding `n` versions of a DPO model (what register leaves, minus the files)."""
    from mlflow import MlflowClient

    uri, name = f"sqlite:///{tmp_path / 'mlflow.db'}", "tuneline-dpo"
    client = MlflowClient(uri)
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    client.create_registered_model(name)
    for _ in range(n):
        run = client.create_run(exp)
        client.create_model_version(name, source=(tmp_path / "art").as_uri(), run_id=run.info.run_id, tags={"method": "dpo"})
    return uri, name


def _wins(rate: float, n: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-row preference scores: the model ranks chosen above rejected on a share `rate` of the rows."""
    right = np.random.default_rng(seed).random(n) < rate
    return {"reward_chosen": np.where(right, 1.0, -1.0), "reward_rejected": np.zeros(n)}


KEYS = [f"p{i}" for i in range(200)]


def _promote(config, uri, name, version, scores_by_version):
    """The shared promotion (lock, aliases, stages) with the preference task's own gate."""
    from tuneline import plugins
    from tuneline.tracking.promotion import promote_with

    plugin = plugins.get("preference")
    scores = {v: {"keys": KEYS, "scores": s} for v, s in scores_by_version.items()}
    return promote_with(uri, name, version, "preference_accuracy",
                        lambda champion: plugin.gate(config, scores[version], None if champion is None else scores[champion]))


def test_two_racing_llm_promotions_end_with_one_champion(tmp_path):
    from tuneline.tracking import runs as tracking
    from tuneline.config import load_config

    config = load_config(None, ["task=preference", "promote.bootstrap_samples=200"])
    uri, name = _registry(tmp_path, 2)
    scores = {"1": _wins(0.5), "2": _wins(0.9, seed=1)}  # v2 clearly better
    start, decisions = threading.Barrier(2), {}

    def run(version: str) -> None:
        start.wait()
        decisions[version] = _promote(config, uri, name, version, scores)

    threads = [threading.Thread(target=run, args=(v,)) for v in ("1", "2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # serialised: exactly one saw no champion; the other was gated against it, and the better one won
    assert sorted(d["previous_champion"] is None for d in decisions.values()) == [False, True]
    assert tracking.alias_version(uri, name, "champion") == "2"
    first = next(v for v, d in decisions.items() if d["previous_champion"] is None)
    if first == "1":
        assert decisions["2"]["promote"] and tracking.alias_version(uri, name, "previous") == "1"
    else:
        assert not decisions["1"]["promote"] and tracking.alias_version(uri, name, "challenger") == "1"


def test_llm_promotion_waits_for_the_registry_lock_and_a_refused_version_is_challenger(tmp_path):
    from tuneline.tracking import runs as tracking
    from tuneline.config import load_config

    config = load_config(None, ["task=preference", "promote.bootstrap_samples=200"])
    uri, name = _registry(tmp_path, 3)
    scores = {"1": _wins(0.7), "2": _wins(0.4, seed=1), "3": _wins(0.95, seed=2)}
    with tracking.registry_lock(uri, name):  # a promotion of the classifier's kind is deciding
        waiting = threading.Thread(target=_promote, args=(config, uri, name, "1", scores))
        waiting.start()
        waiting.join(1.0)
        assert waiting.is_alive() and tracking.alias_version(uri, name, "champion") is None
    waiting.join(60)
    assert tracking.alias_version(uri, name, "champion") == "1"

    refused = _promote(config, uri, name, "2", scores)
    assert refused["promote"] is False and refused["champion_rescored_on_rows"] == len(KEYS)
    assert tracking.alias_version(uri, name, "challenger") == "2" and tracking.alias_version(uri, name, "champion") == "1"
    assert tracking.client(uri).get_model_version(name, "2").current_stage == "Staging"

    promoted = _promote(config, uri, name, "3", scores)
    assert promoted["promote"] is True and promoted["test"] == "paired_bootstrap" and promoted["p_value"] < 0.05
    assert [tracking.alias_version(uri, name, a) for a in ("champion", "previous")] == ["3", "1"]
    assert _promote(config, uri, name, "3", scores)["reason"] == "version 3 is already champion"
