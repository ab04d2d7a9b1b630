"""The LLM tasks end to end on tiny slices of HH-RLHF with the real SmolLM2-135M on CPU:
DPO and a reward model through the Prefect flow, chat SFT through `dvc repro`."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import yaml

from conftest import dvc_repro, run_pipeline, venv_env
from llm_fixtures import LLM_SMOKE_OVERRIDES, llm_base, preference_files, sft_files  # noqa: F401  (fixtures)

pytestmark = pytest.mark.smoke


def client(root):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


@pytest.fixture(scope="module")
def dpo_run(prefect_server, llm_base, preference_files, tmp_path_factory):
    train, test = preference_files
    root = tmp_path_factory.mktemp("dpo")
    overrides = ["task=preference", f"data.source={train}", f"data.test_source={test}", *LLM_SMOKE_OVERRIDES]
    results, flow_run_id = run_pipeline(root, overrides)
    return root, overrides, results, flow_run_id


def test_dpo_registers_an_adapter_that_learns_its_training_pairs(dpo_run, llm_base):
    root, _, results, _ = dpo_run
    reg, refit = results["register"], results["refit"]
    assert reg["registered_model_name"] == "tuneline-dpo" and reg["version"] == "1"
    assert results["promote"]["promote"] is True
    assert str(client(root).get_model_version_by_alias("tuneline-dpo", "champion").version) == "1"
    # DPO moves the implicit reward of chosen above rejected on the pairs it was trained on.
    assert refit["train_preference_accuracy"] > 0.5
    assert refit["train_mean_margin"] > 0
    # the test metric is the share of test pairs whose implicit reward ranks chosen first (ties half)
    scores = json.loads((root / "data" / "eval" / "scores.json").read_text())
    chosen, rejected = np.array(scores["reward_chosen"]), np.array(scores["reward_rejected"])
    assert refit["test_pairs"] == len(scores["prompt_key"]) == 4
    assert refit["test_preference_accuracy"] == pytest.approx(np.mean((chosen > rejected) + 0.5 * (chosen == rejected)))
    assert refit["train_samples_per_second"] > 0
    # tuneline.metrics.summarize, as for the classifier: one holdout split has no spread
    cv = results["crossval"]["metrics"]["preference_accuracy"]
    assert cv["std"] == 0 and cv["ci95_low"] == cv["mean"] == cv["ci95_high"]

    run = client(root).get_run(reg["run_id"])
    for key in ("test_preference_accuracy", "test_mean_margin", "train_preference_accuracy", "cv_preference_accuracy_mean",
                "cv_preference_accuracy_ci95_low", "train_samples_per_second"):
        assert key in run.data.metrics, key
    assert run.data.metrics["train_preference_accuracy"] == pytest.approx(refit["train_preference_accuracy"])
    assert run.data.tags["cv.mode"] == "holdout (1 split)" and run.data.params["llm.cv_mode"] == "holdout"
    version = client(root).get_model_version("tuneline-dpo", "1")
    assert version.tags["base.sha256"] == llm_base.ref["sha256"] and version.tags["base.kind"] == "gguf-package"
    assert version.tags["method"] == "dpo"


def test_generated_answers_are_logged_as_a_table(dpo_run):
    root, _, results, _ = dpo_run
    c = client(root)
    run_id = results["register"]["run_id"]
    assert "generated_answers.json" in {a.path for a in c.list_artifacts(run_id)}
    table = json.loads(open(c.download_artifacts(run_id, "generated_answers.json", str(root))).read())
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    assert [r["prompt"] for r in rows] == ["What is the capital of France?", "Name a primary color."]
    assert all(r["answer"].strip() and r["base_answer"].strip() for r in rows)
    assert "Paris" in rows[0]["answer"]


def test_registered_version_is_the_adapter_and_answers_prompts(dpo_run, monkeypatch):
    import mlflow.pyfunc
    import pandas as pd

    root, _, _, _ = dpo_run
    adapter = root / "models" / "model"
    assert (adapter / "adapter_model.safetensors").stat().st_size < 5_000_000  # the LoRA only, not the 540 MB base
    assert not (adapter / "model.safetensors").exists()
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "smollm2-135m-instruct"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/tuneline-dpo@champion")
    out = model.predict(pd.DataFrame({"prompt": ["What is the capital of France?", "Say hello."]}), params={"max_new_tokens": 12})
    assert list(out.columns) == ["response"] and len(out) == 2
    assert "Paris" in out["response"][0] and out["response"][1].strip()


def test_tuneline_predict_answers_a_jsonl_of_prompts(dpo_run, tmp_path):
    root, _, _, _ = dpo_run
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "What is the capital of France?"}\n{"prompt": "Name a primary color."}\n')
    out = tmp_path / "answers.jsonl"
    proc = subprocess.run(["tuneline", "predict", str(prompts), "-o", str(out), "--model", "models:/tuneline-dpo@champion",
                           "--text-column", "prompt"], cwd=root, env=venv_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["What is the capital of France?", "Name a primary color."]
    assert "Paris" in rows[0]["response"] and rows[1]["response"].strip()


def test_promotion_rescores_the_champion_on_the_same_pairs(dpo_run):
    from tuneline.config import load_config
    from tuneline.pipeline.shell import run_stage

    root, overrides, results, _ = dpo_run
    retried = run_stage("register", load_config(None, overrides), root)  # a retry: the same inputs, no new version
    assert retried["version"] == "1" and retried["reused"] is True
    # the same adapter registered again from another experiment: a new version that must tie, not promote
    config = load_config(None, [*overrides, "tracking.experiment=tuneline-again"])
    reg = run_stage("register", config, root)
    decision = run_stage("promote", config, root)
    assert reg["version"] == "2" and decision["promote"] is False
    assert decision["champion_rescored_on_rows"] == 4 and decision["previous_champion"] == "1"
    assert decision["champion"] == pytest.approx(results["refit"]["test_preference_accuracy"], abs=1e-9)
    assert str(client(root).get_model_version_by_alias("tuneline-dpo", "champion").version) == "1"
    assert str(client(root).get_model_version_by_alias("tuneline-dpo", "challenger").version) == "2"


def test_flow_runs_the_same_eight_stages(dpo_run):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from tuneline.config import Config
    from tuneline.pipeline.shell import ORDER, outputs

    root, _, _, flow_run_id = dpo_run

    async def task_names() -> list[str]:
        async with get_client() as c:
            runs = await c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        return [r.name.rsplit("-", 1)[0] for r in sorted(runs, key=lambda r: r.start_time)]

    assert asyncio.run(task_names()) == list(ORDER)
    for name in ORDER:
        for rel in outputs(name, Config().paths):
            assert (root / rel).exists(), rel


def test_reward_model_end_to_end(prefect_server, llm_base, preference_files, tmp_path, monkeypatch):
    import mlflow.pyfunc
    import pandas as pd

    train, test = preference_files
    overrides = ["task=preference", "llm.preference_method=reward_model", f"data.source={train}", f"data.test_source={test}",
                 *LLM_SMOKE_OVERRIDES, "llm.max_steps=2"]
    results, _ = run_pipeline(tmp_path, overrides)
    reg, decision = results["register"], results["promote"]
    metrics = client(tmp_path).get_run(reg["run_id"]).data.metrics
    # the first reward model is not champion unchallenged: the floor (an exact one-sided sign test of its
    # held-out accuracy against chance) refuses it, as it must on 4 test pairs (p >= 0.5**4 > 0.05)
    assert reg["registered_model_name"] == "tuneline-reward-model" and decision["floor_test"] == "sign_test_exact"
    assert decision["promote"] is (decision["floor_p_value"] < 0.05) and decision["above_floor"] is decision["promote"]
    assert decision["promote"] is False and "not significantly above" in decision["reason"]
    scores = json.loads((tmp_path / "data" / "eval" / "scores.json").read_text())
    chosen, rejected = np.array(scores["reward_chosen"]), np.array(scores["reward_rejected"])
    assert metrics["test_pairwise_accuracy"] == pytest.approx(np.mean((chosen > rejected) + 0.5 * (chosen == rejected)))
    assert "cv_pairwise_accuracy_mean" in metrics
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(reg["model_uri"])
    rewards = model.predict(pd.DataFrame({"prompt": ["How do I boil an egg?"] * 2,
                                          "response": ["Boil it for nine minutes.", "Go away."]}))
    assert list(rewards.columns) == ["reward"] and rewards["reward"].notna().all() and rewards["reward"].nunique() == 2


def test_chat_sft_through_dvc_repro(repo_copy, llm_base, sft_files):

    train, test = sft_files
    overrides = ["task=chat_sft", f"data.source={train}", f"data.test_source={test}", *LLM_SMOKE_OVERRIDES, "llm.max_steps=2"]
    dvc_repro(repo_copy, overrides)  # the chat task's DAG
    reg = json.loads((repo_copy / "data" / "registry" / "registration.json").read_text())
    assert reg["registered_model_name"] == "tuneline-chat-sft" and reg["method"] == "chat_sft"
    metrics = client(repo_copy).get_run(reg["run_id"]).data.metrics
    assert 1.0 < metrics["test_perplexity"] < 1000 and metrics["test_eval_loss"] > 0
    assert metrics["test_perplexity"] == pytest.approx(2.718281828 ** metrics["test_eval_loss"], rel=1e-6)
    assert "cv_perplexity_mean" in metrics
    assert json.loads((repo_copy / "data" / "registry" / "promotion.json").read_text())["promote"] is True
    dvc_lock = yaml.safe_load((repo_copy / "dvc.lock").read_text())["stages"]
    assert dvc_lock["ingest"]["params"]["params.yaml"]["task"] == "chat_sft"
    # the chat task's stages record the keys it reads, never the classifier's sections
    assert "llm" in dvc_lock["crossval"]["params"]["params.yaml"] and "train" not in dvc_lock["crossval"]["params"]["params.yaml"]
    assert set(dvc_lock["crossval"]["params"]["params.yaml"]) == {"task", "llm", "cv.k", "cv.seed"}


def test_run_summary_names_version_metric_and_decision(dpo_run):
    from tuneline.config import load_config
    from tuneline.pipeline.shell import run_summary

    root, overrides, results, _ = dpo_run
    text = "\n".join(run_summary(load_config(None, overrides), results, 12.0))
    assert "models:/tuneline-dpo/1" in text and "preference_accuracy" in text and "PROMOTED" in text
    assert f"{results['refit']['test_preference_accuracy']:.4f}" in text and "holdout" in text


def test_registry_commands_work_for_the_llm_task(dpo_run):
    """`tuneline models`, `promote` and `rollback` take the registered name and the gate from the task."""
    root, overrides, _, _ = dpo_run
    sets = [a for o in overrides for a in ("--set", o)]

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["tuneline", *args, *sets], cwd=root, env=venv_env(), capture_output=True, text=True, timeout=600)

    models = cli("models")
    assert models.returncode == 0, models.stderr[-2000:]
    assert "tuneline-dpo" in models.stdout and "champion" in models.stdout and "preference_accuracy" in models.stdout
    again = cli("promote", "1")
    assert again.returncode == 3 and "already champion" in again.stdout
    missing = cli("promote", "99")
    assert missing.returncode == 2 and "no version '99'" in missing.stdout + missing.stderr
