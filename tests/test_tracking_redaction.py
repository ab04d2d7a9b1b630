"""A tracking URI that holds `user:password@` never shows: not in what register and promote return
or write, not in the run summary, the logs or the output, not in MLflow params, tags, descriptions
or artifacts — for the LLM tasks and the classifier alike. A real `mlflow server` (SQLite, proxied
artifacts) reached through an http://user:password@ URI; no model is trained."""
from __future__ import annotations

import json
import logging
import secrets
import subprocess
from pathlib import Path

import pytest

from conftest import free_port, stop_process, venv_env, wait_http
from llm_fixtures import registrable_classifier_project, registrable_dpo_project

pytestmark = pytest.mark.integration

PASSWORD = f"pw-{secrets.token_hex(8)}"


@pytest.fixture(scope="module")
def credentialed_uri(tmp_path_factory):
    home = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    proc = subprocess.Popen(
        ["mlflow", "server", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}", "--artifacts-destination",
         str(home / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=home, env=venv_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc=proc)
        yield f"http://tuneline:{PASSWORD}@127.0.0.1:{port}"
    finally:
        stop_process(proc)


def _logged_text(uri: str, run_id: str, name: str, version: str, tmp_path) -> str:
    """Everything MLflow holds for a run and its model version: params, tags, description, artifacts."""
    from mlflow.artifacts import download_artifacts

    from tuneline.tracking import runs as tracking

    c = tracking.client(uri)
    run, mv = c.get_run(run_id), c.get_model_version(name, version)
    local = download_artifacts(run_id=run_id, artifact_path="", dst_path=str(tmp_path / "artifacts"), tracking_uri=uri)
    files = [p.read_bytes().decode(errors="replace") for p in Path(local).rglob("*") if p.is_file()]
    return json.dumps([run.data.params, run.data.tags, mv.tags, mv.description, run.info.artifact_uri, mv.source]) + "".join(files)


def _check(places: dict[str, str]) -> None:
    leaked = [where for where, text in places.items() if PASSWORD in text]
    assert not leaked, f"the tracking password shows in: {leaked}"


@pytest.mark.parametrize("task", ["classification", "preference"])
def test_register_promote_and_summary_never_show_the_password(task, credentialed_uri, tmp_path, monkeypatch, caplog, capsys):
    from tuneline.pipeline.shell import run_stage, run_summary
    from tuneline.storage import read_json

    monkeypatch.setenv("MLFLOW_TRACKING_URI", credentialed_uri)
    project = registrable_dpo_project if task == "preference" else registrable_classifier_project
    config = project(tmp_path)
    caplog.set_level(logging.DEBUG)
    reg = run_stage("register", config, tmp_path)
    again = run_stage("register", config, tmp_path)  # the reused registration is redacted as well
    decision = run_stage("promote", config, tmp_path)
    results = {"register": reg, "promote": decision, "refit": read_json(tmp_path / config.paths.eval_dir / "metrics.json"),
               "crossval": read_json(tmp_path / config.paths.cv_dir / "summary.json")}
    summary = "\n".join(run_summary(config, results, 1.0))
    assert decision["promote"] is True and again["reused"] is True
    assert reg["tracking_uri"] == credentialed_uri.replace(f"tuneline:{PASSWORD}@", "") and reg["tracking_uri"] in summary
    out = capsys.readouterr()
    _check({"register": json.dumps(reg), "reused register": json.dumps(again), "promote": json.dumps(decision),
            "registration.json": (tmp_path / config.paths.registration).read_text(),
            "promotion.json": (tmp_path / config.paths.promotion).read_text(), "summary": summary, "logs": caplog.text,
            "output": out.out + out.err,
            "MLflow": _logged_text(credentialed_uri, reg["run_id"], reg["registered_model_name"], reg["version"], tmp_path)})
