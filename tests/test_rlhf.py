"""RLHF on CPU with the real SmolLM2-135M and tiny settings: the rlhf flow trains a reward model on a
clearly learnable (polite vs rude) preference set, gates it, and optimises a GRPO policy against it;
RLOO then runs through `dvc repro` against the registered reward model by URI; a reward model that
fails its gate is refused before any RL. One flow run is shared by the module (the expensive part)."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from conftest import REPO, dvc_repro, repo_files, venv_env
from llm_fixtures import (REWARD_SMOKE_OVERRIDES, RL_SMOKE_OVERRIDES, llm_base, polite_files,  # noqa: F401,F811  (fixtures)
                          polite_rude_pairs, registrable_dpo_project, write_jsonl)

pytestmark = pytest.mark.smoke

POLICY_METRICS = ("test_mean_reward", "test_base_mean_reward", "test_reward_gain", "test_reward_gain_ci95_low",
                  "test_reward_gain_ci95_high", "test_kl_to_reference", "test_kl_per_token", "test_mean_response_tokens",
                  "test_base_mean_response_tokens", "test_reward_per_token", "test_base_reward_per_token",
                  "train_mean_reward", "train_base_mean_reward", "train_kl_k3", "train_prompts_per_second")


def client(root):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the repository (the flow runs in it; `dvc repro` later runs in it too)."""
    dest = tmp_path_factory.mktemp("rlhf") / "project"
    for rel in repo_files():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    return dest


@pytest.fixture(scope="module")
def rl_files(tmp_path_factory):
    """The policy's prompts: a preference file's (6 training, 4 held-out prompts)."""
    d = tmp_path_factory.mktemp("rl-prompts")
    return write_jsonl(d / "train.jsonl", polite_rude_pairs(6, skip=28)), write_jsonl(d / "test.jsonl", polite_rude_pairs(4, skip=34))


@pytest.fixture(scope="module")
def rlhf_run(prefect_server, llm_base, polite_files, rl_files, project):
    from tuneline.flows.rlhf import rlhf

    (train, test), (rl_train, rl_test) = polite_files, rl_files
    reward = [f"data.source={train}", f"data.test_source={test}", *REWARD_SMOKE_OVERRIDES[2:]]
    policy = [f"data.source={rl_train}", f"data.test_source={rl_test}", *RL_SMOKE_OVERRIDES]
    cwd = os.getcwd()
    os.chdir(project)
    try:
        results = rlhf(params=None, reward_overrides=reward, policy_overrides=policy, root=str(project))
    finally:
        os.chdir(cwd)
    return results


def test_the_flow_gates_the_reward_model_then_trains_and_registers_a_grpo_policy(rlhf_run, project):
    from tuneline.config import load_config
    from tuneline.storage import path_digest

    reward, policy = rlhf_run["reward_model"], rlhf_run["policy"]
    # the reward half: an ordinary reward-model run whose promotion needed accuracy significantly above chance
    decision = reward["promote"]
    assert decision["promote"] is True and decision["floor_test"] == "sign_test_exact" and decision["floor_p_value"] < 0.05
    assert reward["refit"]["test_pairwise_accuracy"] > 0.9
    version = client(project).get_model_version("tuneline-reward-model", "1")
    assert version.tags["gate.above_floor"] == "true" and float(version.tags["gate.floor_p_value"]) < 0.05
    assert rlhf_run["reward_model_uri"] == "models:/tuneline-reward-model/1"

    # the RL half: a grpo version, with its reward model's version and hash in lineage
    reg, refit = policy["register"], policy["refit"]
    assert reg["registered_model_name"] == "tuneline-grpo" and reg["version"] == "1"
    selection = json.loads((project / load_config(None, []).paths.selection).read_text())
    ref = selection["reward_model"]
    assert (ref["name"], ref["version"], ref["kind"]) == ("tuneline-reward-model", "1", "registry")
    assert ref["sha256"] == path_digest(ref["folder"]) and ref["pairwise_accuracy"] == pytest.approx(reward["refit"]["test_pairwise_accuracy"], abs=1e-6)
    v = client(project).get_model_version("tuneline-grpo", "1")
    assert v.tags["reward_model.version"] == "1" and v.tags["reward_model.sha256"] == ref["sha256"]
    assert v.tags["method"] == "grpo" and v.tags["base.kind"] == "gguf-package"
    assert v.tags["scoring.decoding"] == "sampled" and v.tags["scoring.samples"] == "2" and v.tags["scoring.max_new_tokens"] == "8"
    run = client(project).get_run(reg["run_id"])
    assert run.data.tags["reward_model.name"] == "tuneline-reward-model" and run.data.params["llm.beta"] == "0.1"
    for key in POLICY_METRICS:
        assert key in run.data.metrics and np.isfinite(run.data.metrics[key]), key

    # the figures are what the per-prompt scores say
    scores = json.loads((project / "data" / "eval" / "scores.json").read_text())
    tuned, base = np.array(scores["reward"]), np.array(scores["base_reward"])
    assert len(scores["prompt_key"]) == refit["test_prompts"] == 4
    assert refit["test_mean_reward"] == pytest.approx(tuned.mean()) and refit["test_base_mean_reward"] == pytest.approx(base.mean())
    assert refit["test_reward_gain_ci95_low"] <= refit["test_reward_gain"] <= refit["test_reward_gain_ci95_high"]
    assert refit["test_mean_response_tokens"] == pytest.approx(np.mean(scores["tokens"])) and refit["test_mean_response_tokens"] <= 8
    assert refit["test_kl_to_reference"] == pytest.approx(np.mean(scores["kl"]))
    assert refit["train_kl_k3"] >= 0  # trl's per-token k3 estimate during training: beta > 0 keeps a reference

    # promotion of the first policy: gated on beating the base's held-out reward significantly
    d = policy["promote"]
    assert d["floor_what"] == "the base model" and d["floor"] == pytest.approx(refit["test_base_mean_reward"])
    assert d["promote"] is (d["floor_p_value"] < 0.05)

    # a table of base vs tuned answers for people to read
    table = json.loads(open(client(project).download_artifacts(reg["run_id"], "generated_answers.json", str(project))).read())
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    assert len(rows) == 4 and {"prompt", "answer", "base_answer", "reward", "base_reward"} <= set(rows[0])
    assert all(r["answer"].strip() and r["base_answer"].strip() for r in rows)


def test_rloo_runs_under_dvc_repro_against_the_reward_model_by_registry_uri(rlhf_run, project, rl_files):
    import subprocess

    import yaml

    from tuneline.pipeline.fingerprint import external_digest

    rl_train, rl_test = rl_files
    overrides = ["task=preference", "llm.preference_method=rloo", f"data.source={rl_train}", f"data.test_source={rl_test}",
                 *RL_SMOKE_OVERRIDES]  # llm.reward_model: the default models:/tuneline-reward-model@champion
    dvc_repro(project, overrides)
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert stages["select"]["always_changed"] is True and "llm.reward_model" in stages["select"]["params"]
    v = client(project).get_model_version("tuneline-rloo", "1")
    reward_version = client(project).get_model_version("tuneline-reward-model", "1")
    assert v.tags["method"] == "rloo" and v.tags["reward_model.spec"] == "models:/tuneline-reward-model@champion"
    assert v.tags["reward_model.version"] == "1" and v.tags["reward_model.run_id"] == reward_version.run_id
    run = client(project).get_run(v.run_id)
    for key in POLICY_METRICS:
        assert key in run.data.metrics, key
    # what decides a rerun: the alias as the registry resolves it now; select looks every time, the rest stays
    assert external_digest("models:/tuneline-reward-model@champion", project) == f"tuneline-reward-model/1/{reward_version.run_id}"
    again = subprocess.run(["dvc", "repro"], cwd=project, env=venv_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "Running stage 'select'" in again.stdout and "Running stage 'crossval'" not in again.stdout


def test_a_reward_model_that_failed_its_gate_is_refused_before_any_rl(llm_base, tmp_path):
    from tuneline.config import load_config
    from tuneline.llm.reward import RewardModelError
    from tuneline.pipeline.shell import run_stage

    # a reward model whose held-out accuracy is near chance: registered, but the floor refuses it
    config = registrable_dpo_project(tmp_path, method="reward_model")
    run_stage("register", config, tmp_path)
    decision = run_stage("promote", config, tmp_path)
    accuracy = decision["candidate"]
    assert decision["promote"] is False and "not significantly above chance" in decision["reason"]
    version = client(tmp_path).get_model_version("tuneline-reward-model", "1")
    assert version.tags["gate.above_floor"] == "false" and version.tags["promotion.promoted"] == "false"

    rl = load_config(None, ["task=preference", "llm.preference_method=grpo", "llm.reward_model=models:/tuneline-reward-model/1",
                            *RL_SMOKE_OVERRIDES])
    with pytest.raises(RewardModelError) as info:
        run_stage("select", rl, tmp_path)
    message = str(info.value)
    assert "tuneline-reward-model version 1" in message and f"{accuracy:.4f}" in message
    assert "not significantly above 0.5" in message and "sign_test_exact" in message
    assert not (tmp_path / rl.paths.selection).exists()  # nothing for crossval/refit to start from
    # the alias alone is not there either: the first reward model no longer becomes champion unchallenged
    rl = load_config(None, ["task=preference", "llm.preference_method=grpo", *RL_SMOKE_OVERRIDES])
    with pytest.raises(RewardModelError, match="no such alias of 'tuneline-reward-model'"):
        run_stage("select", rl, tmp_path)
