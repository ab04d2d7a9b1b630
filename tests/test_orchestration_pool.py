"""Team mode end to end: a real Prefect server on PostgreSQL with an auth string, a `gpu` process
work pool with its worker and the `tuneline-finetune/gpu` deployment from prefect.yaml, and an
MLflow server with basic auth on PostgreSQL. `tuneline run` is a team member's process; the worker
is the GPU machine (it shares this filesystem, as it would share a mount).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import REPO, stop_process
from team_servers import (client_env, http, kill_flow_run_processes, make_project, prefect_cli, psql_rows, run_pipeline, step,
                          wait_for)
from tuneline.pipeline.stages import ORDER

pytestmark = pytest.mark.integration

MODEL = "tuneline-team"
# Two cheap candidates (frozen features, TF-IDF): what is checked is where crossval + refit run and
# what is recorded; the resume test below fine-tunes on the pool.
TEAM = ["preprocess.sample_size=600", "cv.k=2", "select.strategies=[feature_extraction]", "train.work_pool=gpu",
        f"tracking.registered_model_name={MODEL}", "tracking.experiment=tuneline-team"]
# A tiny full fine-tune: 96 training tweets, 9 optimizer steps per fine-tune, a checkpoint every 3.
RESUME_MODEL = "tuneline-resume"
RESUME = ["preprocess.sample_size=120", "cv.k=2", "select.baseline=false", "select.strategies=[full]", "train.max_length=32",
          "train.batch_size=8", "train.max_steps=9", "train.checkpoint_every=3", "train.work_pool=gpu",
          f"tracking.registered_model_name={RESUME_MODEL}", "tracking.experiment=tuneline-resume"]


@pytest.fixture(scope="module")
def gpu_worker(team_prefect, tmp_path_factory):
    """The GPU machine: its own checkout, the `gpu` pool, the deployment, a running worker."""
    checkout = make_project(tmp_path_factory.mktemp("gpu-machine") / "tuneline", [])
    env = client_env(team_prefect, None, tmp_path_factory.mktemp("deployer-home"))
    prefect_cli(env, "work-pool", "create", "gpu", "--type", "process")
    prefect_cli(env, "--no-prompt", "deploy", "--name", "gpu", cwd=checkout)
    home = tmp_path_factory.mktemp("worker-home")
    worker_env = client_env(team_prefect, None, home, TUNELINE_PROJECT_DIR=str(checkout), PREFECT_WORKER_QUERY_SECONDS="1",
                            PREFECT_LOGGING_LEVEL="INFO", HF_HUB_OFFLINE="1")
    log = open(home / "worker.log", "w")
    proc = subprocess.Popen(["prefect", "worker", "start", "--pool", "gpu", "--name", "gpu-worker-1"], env=worker_env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: any(w["name"] == "gpu-worker-1" and w.get("status") == "ONLINE"
                             for w in team_prefect.api("POST", "/work_pools/gpu/workers/filter", {})), 90, "the gpu worker")
        yield SimpleNamespace(proc=proc, checkout=checkout, log=home / "worker.log")
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture(scope="module")
def team_runs(team_prefect, team_mlflow, gpu_worker, tmp_path_factory):
    """The pipeline twice with the same inputs, fine-tuning on the gpu pool both times."""
    project = make_project(tmp_path_factory.mktemp("team") / "project", TEAM)
    env = client_env(team_prefect, team_mlflow, tmp_path_factory.mktemp("member-home"), TUNELINE_POLL_SECONDS="1",
                     HF_HUB_OFFLINE="1")
    marks, load = [time.time()], [os.getloadavg()[0]]
    first, first_s = run_pipeline(project, env)
    assert first.returncode == 0, first.stdout + first.stderr
    marks.append(time.time())
    second, second_s = run_pipeline(project, env)
    assert second.returncode == 0, second.stdout + second.stderr
    marks.append(time.time())
    load.append(os.getloadavg()[0])
    return SimpleNamespace(project=project, env=env, first=first, second=second, seconds=(first_s, second_s), marks=marks,
                           load=load)


def runs_between(prefect, flow: str, start: float, end: float) -> list[dict]:
    from datetime import datetime

    def ts(r):
        return datetime.fromisoformat(r["expected_start_time"].replace("Z", "+00:00")).timestamp()

    return [r for r in prefect.flow_runs(flow, start) if ts(r) < end]


def run_structure(prefect, start: float, end: float):
    (parent,) = runs_between(prefect, "tuneline-pipeline", start, end)
    children = runs_between(prefect, "tuneline-finetune", start, end)
    return parent, prefect.task_runs(parent["id"]), children


def test_pipeline_finetunes_on_the_gpu_pool_and_registers_in_postgres_mlflow(team_runs, team_prefect, team_mlflow):
    parent, tasks, children = run_structure(team_prefect, *team_runs.marks[:2])
    assert parent["state"]["type"] == "COMPLETED"
    assert len(children) == 1
    child = children[0]
    assert child["work_pool_name"] == "gpu" and child["state"]["type"] == "COMPLETED"
    assert child["parameters"]["root"] == str(team_runs.project.resolve())
    child_steps = [step(t) for t in team_prefect.task_runs(child["id"])]
    parent_steps = [step(t) for t in tasks if step(t) in (*ORDER, "finetune")]
    assert parent_steps == ["ingest", "validate", "preprocess", "select", "finetune", "register", "promote"]
    assert child_steps == ["crossval", "refit"]
    assert parent_steps[:4] + child_steps + parent_steps[5:] == list(ORDER)  # dvc.yaml's order (test_pipeline_smoke)

    # Registered on the team server, whose store is PostgreSQL: the row is in the database itself.
    backend = team_mlflow.databases[0]
    assert psql_rows(backend, f"SELECT name || ':' || version FROM model_versions WHERE name = '{MODEL}'") == [f"{MODEL}:1"]
    assert psql_rows(backend, f"SELECT alias || ':' || version FROM registered_model_aliases WHERE name = '{MODEL}'") == ["champion:1"]
    assert "models:/tuneline-team/1" in team_runs.first.stdout


def test_rerun_with_unchanged_inputs_takes_every_step_from_the_cache(team_runs, team_prefect, team_mlflow):
    parent, tasks, children = run_structure(team_prefect, *team_runs.marks[1:])
    state = {step(t): t["state"]["name"] for t in tasks}
    assert parent["state"]["type"] == "COMPLETED"
    # crossval + refit, the pool's part, are one cache hit: nothing was sent to the gpu pool
    assert [state[s] for s in ("ingest", "validate", "preprocess", "select", "finetune")] == ["Cached"] * 5
    assert children == []
    # register is not cached (side effects) but idempotent: it found version 1 for these inputs
    assert state["register"] == "Completed" and state["promote"] == "Completed"
    backend = team_mlflow.databases[0]
    assert psql_rows(backend, f"SELECT version FROM model_versions WHERE name = '{MODEL}'") == ["1"]
    assert "already champion" in team_runs.second.stdout

    first_s, second_s = team_runs.seconds
    if os.environ.get("TUNELINE_WRITE_BENCHMARKS") == "1":
        sys.path.insert(0, str(REPO))
        from benchmarks.report import stamp, update_section

        update_section("orchestration", (
            "## Orchestration: a rerun with unchanged inputs (Prefect cache)\n\n"
            "`tuneline run` twice in a team setup — Prefect server and MLflow server (basic auth) on PostgreSQL, "
            "fine-tuning sent to the `gpu` process work pool (worker on the same machine); 600 tweets, k=2, "
            "frozen features and the TF-IDF baseline. Wall time of the whole `tuneline run` process, start to exit.\n\n"
            "| run | wall time | steps run | steps from Prefect's cache |\n|---|---|---|---|\n"
            f"| first | {first_s:.1f} s | all 8 (crossval + refit in a flow run on the gpu pool) | — |\n"
            f"| rerun, same inputs | {second_s:.1f} s ({100 * second_s / first_s:.0f} % of the first) | register (finds "
            "version 1 for these inputs), promote | ingest, validate, preprocess, select, finetune (crossval + refit: "
            "nothing sent to the gpu pool) |\n\n"
            "What remains in the rerun is fixed cost: process start and imports, the MLflow pre-flight, hashing the "
            "steps' inputs and outputs, and the registry look-ups of register/promote. "
            f"Load average on the 2 cores (shared with other work) before/after: {team_runs.load[0]:.1f} / {team_runs.load[1]:.1f}.\n\n"
            + stamp("TUNELINE_WRITE_BENCHMARKS=1 pytest -m integration tests/test_orchestration_pool.py -k rerun")))
    print(f"first run {first_s:.1f} s, cached rerun {second_s:.1f} s")


def test_promote_flow_gates_the_last_registration_again(team_runs):
    code = "from tuneline.flows.promote import promote; print(promote(params='params.yaml', root='.')['reason'])"
    run = subprocess.run([sys.executable, "-c", code], cwd=team_runs.project, env=team_runs.env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "version 1 is already champion" in run.stdout


def test_team_servers_refuse_clients_without_credentials(team_prefect, team_mlflow, tmp_path):
    search = f"{team_mlflow.uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert http("GET", search)[0] == 401
    assert http("GET", search, auth=(team_mlflow.user, "wrong"))[0] == 401
    assert http("GET", search, auth=(team_mlflow.user, team_mlflow.password))[0] == 200
    flows = f"{team_prefect.api_url}/flows/filter"
    assert http("POST", flows, {})[0] == 401
    assert http("POST", flows, {}, auth=("tuneline", "wrong"))[0] == 401
    assert http("POST", flows, {}, auth=tuple(team_prefect.auth_string.split(":", 1)))[0] == 200

    env = client_env(team_prefect, None, tmp_path / "home")
    env.pop("PREFECT_API_AUTH_STRING")
    cli = subprocess.run(["prefect", "work-pool", "ls"], env=env, capture_output=True, text=True, timeout=120)
    assert cli.returncode != 0 and "401" in cli.stdout + cli.stderr

    # A pipeline without MLflow credentials stops at its pre-flight, before any step.
    env = client_env(team_prefect, team_mlflow, tmp_path / "home")
    del env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]
    (tmp_path / "project").mkdir()
    run = subprocess.run(["tuneline", "run"], cwd=tmp_path / "project", env=env, capture_output=True, text=True, timeout=300)
    message = " ".join((run.stdout + run.stderr).split())  # rich wraps long lines
    assert run.returncode == 2, message
    assert f"MLflow tracking server {team_mlflow.uri} refused a client without credentials" in message
    assert [p for p in (tmp_path / "project" / "data").rglob("*") if p.is_file() and p.name != "README.md"] == []


def find_secrets(blobs: dict[str, bytes], secrets: list[str]) -> list[str]:
    return [f"{where} contains secret #{i}" for where, blob in blobs.items() for i, s in enumerate(secrets) if s.encode() in blob]


def test_no_credential_in_any_param_tag_artifact_or_log(team_runs, team_prefect, team_mlflow, gpu_worker, tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    secrets = team_mlflow.secrets + team_prefect.secrets
    assert find_secrets({"control": f"x{secrets[0]}x".encode()}, secrets)  # the scan itself works

    for k, v in team_mlflow.client_env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = MlflowClient(team_mlflow.uri)
    blobs: dict[str, bytes] = {}
    exp = client.get_experiment_by_name("tuneline-team")
    runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)
    assert len(runs) >= 1 + 2 * (1 + 2)  # pipeline run, 2 candidates, 2 folds each
    for run in runs:
        rid = run.info.run_id
        blobs[f"run {rid} params"] = repr(sorted(run.data.params.items())).encode()
        blobs[f"run {rid} tags"] = repr(sorted(run.data.tags.items())).encode()
        blobs[f"run {rid} metrics"] = repr(sorted(run.data.metrics)).encode()
        dest = tmp_path / "artifacts" / rid
        dest.mkdir(parents=True)
        if client.list_artifacts(rid):
            client.download_artifacts(rid, "", str(dest))
        for f in dest.rglob("*"):
            if f.is_file():
                blobs[f"artifact {rid}/{f.relative_to(dest)}"] = f.read_bytes()
    # MLflow 3 keeps a logged model's files apart from its run's artifacts
    from mlflow.artifacts import download_artifacts

    for lm in client.search_logged_models(experiment_ids=[exp.experiment_id]):
        blobs[f"logged model {lm.model_id}"] = repr((lm.params, lm.tags, lm.name)).encode()
        dest = download_artifacts(artifact_uri=f"models:/{lm.model_id}", dst_path=str(tmp_path / "models" / lm.model_id))
        for f in Path(dest).rglob("*"):
            if f.is_file():
                blobs[f"logged model {lm.model_id}/{f.relative_to(dest)}"] = f.read_bytes()
    assert any(k.endswith("model.safetensors") for k in blobs) and any(k.endswith("/params.yaml") for k in blobs)
    for v in client.search_model_versions(f"name = '{MODEL}'"):
        blobs[f"version {v.version}"] = repr((v.tags, v.description, v.source)).encode()

    for flow in ("tuneline-pipeline", "tuneline-finetune"):
        for fr in team_prefect.flow_runs(flow, team_runs.marks[0]):
            blobs[f"flow run {fr['name']} parameters"] = repr(fr["parameters"]).encode()
            blobs[f"flow run {fr['name']} logs"] = "\n".join(team_prefect.logs(fr["id"])).encode()
    for name, proc in (("first", team_runs.first), ("second", team_runs.second)):
        blobs[f"{name} run output"] = (proc.stdout + proc.stderr).encode()
    blobs["worker log"] = gpu_worker.log.read_bytes()
    for f in team_runs.project.rglob("*"):
        if f.is_file() and ".venv" not in f.parts:
            blobs[f"project file {f.relative_to(team_runs.project)}"] = f.read_bytes()
    assert any("prefect-results" in k for k in blobs)
    assert find_secrets(blobs, secrets) == []


def test_killed_finetune_resumes_from_checkpoints_and_matches_an_uninterrupted_run(team_prefect, team_mlflow, gpu_worker, tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("resume") / "project", RESUME)
    env = client_env(team_prefect, team_mlflow, tmp_path_factory.mktemp("resume-home"), TUNELINE_POLL_SECONDS="1",
                     HF_HUB_OFFLINE="1")
    work = project / ".cache" / "finetune"
    start = time.time()
    out = open(project / "run.log", "w")
    proc = subprocess.Popen(["tuneline", "run"], cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # 1st kill: fold 1 is finished, fold 2 is mid-training
        wait_for(lambda: list(work.glob("*-fold1-*/checkpoints/step-*.pt")), 600, "a checkpoint of fold 2")
        assert list(work.glob("*-fold0-*/result.json"))
        assert kill_flow_run_processes(gpu_worker.proc)
        # 2nd kill: the refit is mid-training
        wait_for(lambda: list(work.glob("*-refit-*/checkpoints/step-*.pt")), 600, "a checkpoint of the refit")
        assert kill_flow_run_processes(gpu_worker.proc)
        rc = proc.wait(timeout=900)
    finally:
        stop_process(proc)
        out.close()
    assert rc == 0, (project / "run.log").read_text()[-5000:]

    (parent,) = team_prefect.flow_runs("tuneline-pipeline", start)
    attempts = team_prefect.flow_runs("tuneline-finetune", start)
    assert [a["state"]["name"] for a in attempts] == ["Crashed", "Crashed", "Completed"]
    assert all(a["work_pool_name"] == "gpu" for a in attempts)
    finetune_task = next(t for t in team_prefect.task_runs(parent["id"]) if step(t) == "finetune")
    assert finetune_task["run_count"] == 3

    def resumed_at(logs: list[str], what: str) -> int:
        steps = [int(m.group(1)) for line in logs if line.startswith(what) and (m := re.search(r"at global step (\d+)", line))]
        assert steps, f"no '{what}: resuming' line in {logs}"
        return steps[0]

    second, third = team_prefect.logs(attempts[1]["id"]), team_prefect.logs(attempts[2]["id"])
    assert any("reusing the finished" in line and "-fold0-" in line for line in second)  # fold 1 not trained again
    assert resumed_at(second, "all-MiniLM-L6-v2:full fold 2") > 0
    third_states = {step(t): t["state"]["name"] for t in team_prefect.task_runs(attempts[2]["id"])}
    assert third_states == {"crossval": "Cached", "refit": "Completed"}
    assert resumed_at(third, "refit") > 0

    # Nothing half-registered: one version, from a finished run.
    backend = team_mlflow.databases[0]
    assert psql_rows(backend, f"SELECT version || ':' || r.status FROM model_versions v JOIN runs r ON r.run_uuid = v.run_id "
                              f"WHERE v.name = '{RESUME_MODEL}'") == ["1:FINISHED"]

    # The same refit, never interrupted, gives the same model.
    assert not list(work.glob("*-refit-*")), "the finished refit's checkpoints are cleaned up"
    assert not list((project / "models").glob(".model.*")), "the killed refit's half-written model folder is gone"
    local = [o for o in RESUME if not o.startswith("train.work_pool")]
    reference = subprocess.run(
        ["tuneline", "stage", "refit", *sum((["--set", o] for o in local + ["paths.model_dir=models/reference",
                                              "paths.eval_dir=data/eval-reference", "paths.metrics_dir=metrics-reference"]), [])],
        cwd=project, env=env, capture_output=True, text=True, timeout=900)
    assert reference.returncode == 0, reference.stdout + reference.stderr
    from safetensors.numpy import load_file

    resumed, uninterrupted = load_file(project / "models/model/model.safetensors"), load_file(project / "models/reference/model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    worst = max(float(abs(resumed[k].astype("float64") - uninterrupted[k]).max()) for k in resumed)
    assert worst <= 1e-5, f"resumed model differs from the uninterrupted one by up to {worst}"
    import json

    a, b = (json.loads((project / d / "metrics.json").read_text()) for d in ("data/eval", "data/eval-reference"))
    assert a == pytest.approx(b, abs=1e-6)


def test_prefect_yaml_deploys_the_scheduled_retrain_with_the_cron_from_params(team_prefect, tmp_path):
    project = make_project(tmp_path / "project", ["deploy.cron=15 4 * * 2", "deploy.timezone=Europe/Berlin"])
    env = client_env(team_prefect, None, tmp_path / "home")
    prefect_cli(env, "work-pool", "create", "default", "--type", "process")
    prefect_cli(env, "--no-prompt", "deploy", "--name", "retrain", "--name", "manual", cwd=project)
    retrain = team_prefect.api("GET", "/deployments/name/tuneline-pipeline/retrain")
    assert retrain["work_pool_name"] == "default"
    assert [(s["schedule"]["cron"], s["schedule"]["timezone"], s["active"]) for s in retrain["schedules"]] == \
        [("15 4 * * 2", "Europe/Berlin", True)]
    assert retrain["parameters"] == {"params": "params.yaml", "overrides": [], "root": "."}
    # each worker runs the flow from its own checkout; credentials are not part of the deployment
    assert retrain["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $TUNELINE_PROJECT_DIR }}"}}]
    assert "MLFLOW" not in repr(retrain["job_variables"]) and "AUTH" not in repr(retrain["job_variables"])
    manual = team_prefect.api("GET", "/deployments/name/tuneline-promote/manual")
    assert manual["schedules"] == [] and manual["work_pool_name"] == "default"
