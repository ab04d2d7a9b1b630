"""Summarization end to end on tiny aclsum slices, as a user runs it: the causal default (the real
SmolLM2-135M, LoRA) through `tuneline run`, and the seq2seq path (a tiny random T5 built in the
test) through `dvc repro`; both register a version with ROUGE logged. The registry commands and
`tuneline predict` are checked on the seq2seq version (the same pyfunc and CLI code, a fraction of
the cost)."""
from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from conftest import dvc_repro, venv_env
from llm_fixtures import llm_base  # noqa: F401  (fixture)
from summarization_fixtures import aclsum_slice, tiny_t5  # noqa: F401  (fixtures)

pytestmark = pytest.mark.smoke

# Cheap on a 2-core CPU: abstracts cut to 48 tokens, one optimizer step per training, 8 new tokens.
SUM_SMOKE = ["task=summarization", "summarization.aspect_column=aspect", "summarization.max_document_tokens=48",
             "summarization.max_truncated_fraction=1.0", "summarization.max_steps=1", "summarization.batch_size=4",
             "summarization.max_new_tokens=8", "summarization.holdout_fraction=0.34", "summarization.rouge_bootstrap_samples=200",
             "promote.bootstrap_samples=200"]
ROUGE = ("test_rouge1", "test_rouge2", "test_rougeL", "test_rougeLsum", "base_test_rougeL", "test_rougeL_low", "test_rougeL_high",
         "test_gen_words_mean", "cv_rougeL_mean")


def client(root):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def test_causal_summarizer_through_tuneline_run(llm_base, aclsum_slice, tmp_path):
    train, test = aclsum_slice
    overrides = [*SUM_SMOKE, f"data.source={train}", f"data.test_source={test}"]
    proc = subprocess.run(["tuneline", "run", *_sets(overrides)], cwd=tmp_path, env=venv_env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "models:/tuneline-summarizer/1" in proc.stdout and "test ROUGE" in proc.stdout and "PROMOTED" in proc.stdout
    reg = json.loads((tmp_path / "data" / "registry" / "registration.json").read_text())
    assert reg["registered_model_name"] == "tuneline-summarizer" and reg["family"] == "causal" and reg["version"] == "1"
    run = client(tmp_path).get_run(reg["run_id"])
    for key in ROUGE:
        assert key in run.data.metrics, key
    assert 0.0 <= run.data.metrics["test_rougeL"] <= 1.0 and run.data.metrics["test_gen_words_mean"] > 0
    assert run.data.params["summarization.family"] == "causal" and run.data.tags["tuneline.task"] == "summarization"
    table = json.loads(open(client(tmp_path).download_artifacts(reg["run_id"], "summaries_table.json", str(tmp_path))).read())
    assert {"document", "reference", "base_summary", "tuned_summary"} <= set(table["columns"]) and len(table["data"]) == 6
    version = client(tmp_path).get_model_version("tuneline-summarizer", "1")
    assert version.tags["method"] == "summarization" and version.tags["base.kind"] == "gguf-package"
    assert not (tmp_path / "models" / "model" / "model.safetensors").exists()  # the adapter alone


def test_seq2seq_summarizer_through_dvc_repro_and_a_rescored_champion(repo_copy, aclsum_slice, tiny_t5):
    from tuneline.config import load_config
    from tuneline.pipeline.shell import run_stage

    train, test = aclsum_slice
    overrides = [*SUM_SMOKE, f"data.source={train}", f"data.test_source={test}", "summarization.family=seq2seq",
                 f"summarization.base_model={tiny_t5}", "summarization.max_steps=2"]
    dvc_repro(repo_copy, overrides)
    reg = json.loads((repo_copy / "data" / "registry" / "registration.json").read_text())
    assert reg["registered_model_name"] == "tuneline-summarizer" and reg["family"] == "seq2seq"
    metrics = client(repo_copy).get_run(reg["run_id"]).data.metrics
    assert all(k in metrics for k in ROUGE)
    assert json.loads((repo_copy / "data" / "registry" / "promotion.json").read_text())["promote"] is True
    lock = yaml.safe_load((repo_copy / "dvc.lock").read_text())["stages"]
    assert set(lock["crossval"]["params"]["params.yaml"]) == {"task", "summarization", "cv.k", "cv.seed"}
    assert "src/tuneline/summarization" in {d["path"] for d in lock["refit"]["deps"]}
    assert not any("src/tuneline/llm" == d["path"] for d in lock["refit"]["deps"])
    # the same adapter registered again elsewhere: the champion is re-scored on the same documents and it ties
    config = load_config(repo_copy / "params.yaml", ["tracking.experiment=again"])
    again = run_stage("register", config, repo_copy)
    decision = run_stage("promote", config, repo_copy)
    assert again["version"] == "2" and decision["promote"] is False and decision["champion_rescored_on_rows"] == 6
    assert decision["champion"] == pytest.approx(metrics["test_rougeL"], abs=1e-9)
    # the registered summarizer answers through `tuneline predict`, and `tuneline models` lists it
    docs = repo_copy / "docs.jsonl"
    docs.write_text(json.dumps({"document": json.loads(test.read_text().splitlines()[0])["document"]}) + "\n")
    out = repo_copy / "summaries.jsonl"
    pred = subprocess.run(["tuneline", "predict", str(docs), "-o", str(out), "--text-column", "document"],
                          cwd=repo_copy, env=venv_env(), capture_output=True, text=True, timeout=600)
    assert pred.returncode == 0, pred.stdout[-2000:] + pred.stderr[-2000:]
    assert json.loads(out.read_text().splitlines()[0])["summary"].strip()
    models = subprocess.run(["tuneline", "models"], cwd=repo_copy, env=venv_env(), capture_output=True, text=True, timeout=300)
    assert models.returncode == 0 and "tuneline-summarizer" in models.stdout and "champion" in models.stdout, models.stderr[-2000:]
