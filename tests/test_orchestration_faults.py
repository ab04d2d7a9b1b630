"""The MLflow server fails: down when a run starts (a clear error, nothing trained) and down for a
while in the middle of a run (register is retried and the run completes, registering once); and a
step taken from the Prefect cache only while its outputs are intact."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from conftest import FEATURES_OVERRIDES, free_port, stop_process
from team_servers import client_env, make_project, psql_rows, step, wait_for

pytestmark = pytest.mark.integration


def test_tracking_server_down_at_start_stops_the_run_before_any_step(team_prefect, tmp_path):
    project = make_project(tmp_path / "project", ["preprocess.sample_size=600", "cv.k=3"])
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = client_env(team_prefect, None, tmp_path / "home", MLFLOW_TRACKING_URI=dead)
    start = time.time()
    run = subprocess.run(["tuneline", "run"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    message = " ".join((run.stdout + run.stderr).split())
    assert run.returncode == 2, message
    assert f"MLflow tracking server {dead} is unreachable" in message and "Nothing was trained" in message
    assert "Traceback" not in message
    written = [p for p in (project / "data").rglob("*") if p.is_file() and p.name != "README.md"]  # data/README.md is the repo's
    assert written == [] and not (project / "models").exists()
    (flow_run,) = team_prefect.flow_runs("tuneline-pipeline", start)
    assert flow_run["state"]["type"] == "FAILED"
    assert team_prefect.task_runs(flow_run["id"]) == []  # not one step ran


def test_tracking_server_down_mid_run_is_retried_and_the_run_completes(team_prefect, team_mlflow, tmp_path):
    name = "tuneline-outage"
    project = make_project(tmp_path / "project", [*FEATURES_OVERRIDES, f"tracking.registered_model_name={name}",
                                                  "tracking.experiment=tuneline-outage"])
    # No HTTP-level retries in the MLflow client: the outage must be ridden out by the task's retries.
    env = client_env(team_prefect, team_mlflow, tmp_path / "home", MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", HF_HUB_OFFLINE="1")
    start = time.time()
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen(["tuneline", "run"], cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # down from the first step on (no step before register needs it), so that the outage surely
        # spans register however quickly the one frozen-feature candidate trains
        wait_for(lambda: (project / "data/raw/dataset.parquet").exists(), 300, "the ingest step")
        team_mlflow.server.stop()

        def register_waiting_to_retry():
            runs = team_prefect.flow_runs("tuneline-pipeline", start)
            tasks = team_prefect.task_runs(runs[0]["id"]) if runs else []
            return any(step(t) == "register" and t["state"]["name"] == "AwaitingRetry" for t in tasks)

        wait_for(register_waiting_to_retry, 600, "register to fail and wait for its retry", interval=0.5)
        time.sleep(3)
        team_mlflow.server.start()
        rc = proc.wait(timeout=600)
    finally:
        if team_mlflow.server.proc is None:
            team_mlflow.server.start()
        stop_process(proc)
        log.close()
    output = (tmp_path / "run.log").read_text()
    assert rc == 0, output[-5000:]
    (flow_run,) = team_prefect.flow_runs("tuneline-pipeline", start)
    register = next(t for t in team_prefect.task_runs(flow_run["id"]) if step(t) == "register")
    assert register["state"]["type"] == "COMPLETED" and register["run_count"] >= 2
    backend = team_mlflow.databases[0]
    assert psql_rows(backend, f"SELECT version || ':' || r.status FROM model_versions v JOIN runs r ON r.run_uuid = v.run_id "
                              f"WHERE v.name = '{name}'") == ["1:FINISHED"]


# In-process Prefect (the test harness's server): a step's cache hit needs its outputs intact.
def test_a_step_is_taken_from_the_cache_only_while_its_outputs_are_intact(prefect_server, tmp_path):
    from prefect import flow

    from tuneline.config import load_config
    from tuneline.tasks.caching import result_storage, run_step
    from tuneline.tasks.select import select_task

    config, root = load_config(None, []), str(tmp_path)
    selection = tmp_path / config.paths.selection
    direct_task = select_task.with_options(result_storage=result_storage(root))  # same store, no run_step

    @flow
    def select_once(direct: bool = False) -> str:
        call = direct_task if direct else (lambda *a, **k: run_step(select_task, *a, **k))
        return call(config, root, return_state=True).name

    assert select_once() == "Completed"
    assert select_once() == "Cached"
    selection.unlink()
    assert select_once(direct=True) == "Completed" and selection.is_file()  # no stale hit, even without run_step
    selection.write_text("{}")  # edited by hand
    assert select_once() == "Completed" and json.loads(selection.read_text())["candidates"]
    assert select_once() == "Cached"
