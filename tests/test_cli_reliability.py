"""The CLI under a hostile but fair user, with real processes and real signals: a second run in the
same project waits (or refuses with --no-wait), Ctrl-C ends a run in one line with exit 130, a killed
run leaves no Prefect server behind, and every misuse ends in one line with exit 2."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from conftest import venv_env

INTERRUPTED = "interrupted: nothing half-written; rerun to continue from the finished steps"
SMALL_RUN = ["--set", "preprocess.sample_size=300", "--set", "cv.k=2", "--set", "select.baseline=false"]
NAME = "tuneline-classifier"


def _env(**extra: str) -> dict[str, str]:
    # No PREFECT_HOME/PREFECT_API_URL: each project gets its own temporary server and database, as a user's does.
    env = {k: v for k, v in venv_env().items() if not k.startswith(("PREFECT_HOME", "PREFECT_API_URL", "TUNELINE_FAULT"))}
    return env | {"COLUMNS": "200"} | extra


def _start(args: list[str], cwd: Path, log: Path, **env: str) -> subprocess.Popen:
    """`tuneline ARGS` in its own session (as a terminal's job: a Ctrl-C reaches the whole group)."""
    return subprocess.Popen(["tuneline", *args], cwd=cwd, env=_env(**env), stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait_for(log: Path, pattern: str, proc: subprocess.Popen, timeout: float = 240) -> int:
    """Wait until `pattern` is in the output (whitespace-normalised: log lines wrap); the output's length then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if pattern in " ".join(text.split()):
            return len(text)
        assert proc.poll() is None, f"exited {proc.returncode} before {pattern!r}:\n{text[-3000:]}"
        time.sleep(0.3)
    raise AssertionError(f"{pattern!r} not seen in {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")


def _lines(text: str) -> list[str]:
    return [line.strip() for line in re.split(r"[\r\n]", text) if line.strip()]


def _server_of(proc: subprocess.Popen, timeout: float = 120) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if {"uvicorn", "--factory"} <= set(child.cmdline()):  # Prefect's temporary server, however started
                    return child
            except psutil.Error:
                pass
        time.sleep(0.3)
    raise AssertionError("no temporary Prefect server was started")


def _gone(process: psutil.Process, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.2)
    return False


def _flow_runs(project: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(project / ".prefect" / "prefect.db") as db:
        return db.execute("select f.state_type, s.message from flow_run f left join flow_run_state s on s.id = f.state_id "
                          "order by f.created").fetchall()


# ---- (a) one run at a time per project ---------------------------------------------------------

@pytest.mark.smoke
def test_two_runs_started_together_register_one_version_and_gate_it(tmp_path):
    """Two processes run register then promote in one project at the same moment (same params): the
    lock serialises them, one version is registered, and the version in registration.json is the one
    promotion gated."""
    import json

    from llm_fixtures import registrable_classifier_project
    from mlflow import MlflowClient

    registrable_classifier_project(tmp_path)
    both = [subprocess.Popen(["bash", "-c", "tuneline stage register && tuneline stage promote"], cwd=tmp_path, env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in both]
    assert [p.returncode for p in both] == [0, 0], outputs
    versions = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_model_versions(f"name = '{NAME}'")
    assert [str(v.version) for v in versions] == ["1"], "one version per set of params"
    registration = json.loads((tmp_path / "data/registry/registration.json").read_text())
    decision = json.loads((tmp_path / "data/registry/promotion.json").read_text())
    assert registration["version"] == decision["version"] == "1"
    assert str(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_model_version_by_alias(NAME, "champion").version) == "1"


@pytest.mark.smoke  # real `tuneline` processes: seconds each, not the unit tier's
def test_a_second_run_waits_for_the_first_or_refuses_with_no_wait(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    source = tmp_path / "small.csv"
    source.write_text("text,label\n" + "".join(f"text number {i},{'pos' if i % 2 else 'neg'}\n" for i in range(60)))
    ingest = ["stage", "ingest", "--set", f"data.source={source}", "--set", "data.label_column=label"]
    first = _start(ingest, project, tmp_path / "first.log", TUNELINE_FAULT="hold-lock:120")
    try:
        _wait_for(tmp_path / "first.log", "holds the project lock", first)
        holder = f"pid {first.pid} on host {socket.gethostname()}"
        refusals = [subprocess.run(["tuneline", *args, "--no-wait"], cwd=project, env=_env(), capture_output=True, text=True,
                                   timeout=120) for args in (ingest, ["run"])]
        for refused in refusals:  # `tuneline stage` (what dvc repro calls) and `tuneline run` alike
            lines = _lines(refused.stdout + refused.stderr)
            assert refused.returncode == 2 and len(lines) == 1, lines
            assert holder in lines[0] and "tuneline stage ingest" in lines[0] and ".cache/project.lock" in lines[0], lines

        second = _start(ingest, project, tmp_path / "second.log")
        _wait_for(tmp_path / "second.log", f"waiting for tuneline stage ingest ({holder}, since", second)
        time.sleep(1)
        assert second.poll() is None, "the second run waits while the first holds the lock"
        first.send_signal(signal.SIGKILL)  # the lock dies with its process: no stale lock
        assert second.wait(timeout=120) == 0, (tmp_path / "second.log").read_text()[-3000:]
        assert (project / "data" / "raw" / "dataset.parquet").is_file()
        assert (tmp_path / "second.log").read_text().count("waiting for") == 1, "said once"
    finally:
        first.kill()
        first.wait()


# ---- (c) SIGKILL, then (b) Ctrl-C, during `tuneline run` --------------------------------------
# One project for both (each run costs a minute here): the rerun after the kill is the one interrupted.

@pytest.mark.smoke
def test_killed_run_leaves_no_server_and_ctrl_c_exits_130_in_one_line(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    killed = _start(["run", *SMALL_RUN], project, tmp_path / "killed.log")
    try:
        server = _server_of(killed)
        _wait_for(tmp_path / "killed.log", "is reachable", killed)  # the flow run exists and is Running
        os.kill(killed.pid, signal.SIGKILL)  # tuneline's process only, as the OOM killer does
        killed.wait(timeout=30)
    finally:
        killed.kill()
        killed.wait()
    assert _gone(server, 5), f"temporary Prefect server {server.pid} outlived its killed parent"
    assert [state for state, _ in _flow_runs(project)] == ["RUNNING"]

    log = tmp_path / "run.log"
    run = _start(["run", *SMALL_RUN], project, log)
    try:
        server = _server_of(run)
        seen = _wait_for(log, "cross-validation", run)  # training has started
        os.killpg(run.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground job
        assert run.wait(timeout=60) == 130, log.read_text()[-3000:]
    finally:
        run.kill()
        run.wait()
    output = log.read_text(errors="replace")
    tail = _lines(output[seen:])
    assert tail[-1] == INTERRUPTED and len(tail) <= 6, tail
    assert "Traceback" not in output and "ConnectError" not in output, output[-3000:]
    (dead, dead_note), interrupted = _flow_runs(project)
    assert dead == "CRASHED" and "process died" in dead_note, "the rerun marked the killed run's flow run"
    assert interrupted == ("CRASHED", "Execution was aborted by an interrupt signal.")
    assert _gone(server, 10), "the temporary server stopped with its interrupted run"


# ---- (d) every misuse: one line, exit 2, nothing created ---------------------------------------

def _store(project: Path, champion: bool = True) -> None:
    """A registry with versions 1 and 2 (complete registrations: tagged with the key); 2 is champion, 1 previous."""
    from mlflow import MlflowClient

    from tuneline.tracking.runs import REGISTRATION_KEY

    c = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    c.create_registered_model(NAME)
    exp = c.create_experiment("tuneline", artifact_location=(project / "mlartifacts").as_uri())
    for i in (1, 2):
        run = c.create_run(exp)
        c.set_terminated(run.info.run_id, "FINISHED")
        c.create_model_version(NAME, source=(project / "mlartifacts" / str(i)).as_uri(), run_id=run.info.run_id)
        c.set_model_version_tag(NAME, str(i), "task", "classification")
        c.set_model_version_tag(NAME, str(i), REGISTRATION_KEY, f"key-{i}")
    if champion:
        c.set_registered_model_alias(NAME, "champion", "2")
        c.set_registered_model_alias(NAME, "previous", "1")


def _no_write_access():
    """As root, permission bits only bind without CAP_DAC_OVERRIDE: drop it for the child."""
    if os.geteuid() != 0:
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def drop():
        for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP")
    return drop


PREDICT = ["predict", "in.csv", "-o", "out.csv"]
# name: (project setup, arguments, what the one line must say, whether the project must stay as it was)
CASES = {
    "unknown model": ("store", [*PREDICT, "--model", "models:/nope@champion"], "models:/nope@champion: no registered model 'nope'", True),
    "version 999": ("store", ["promote", "999"], f"{NAME}: no version '999'", True),
    "version abc": ("store", ["promote", "abc"], f"{NAME}: no version 'abc'", True),
    "no champion": ("no champion", PREDICT, f"models:/{NAME}@champion: no champion yet", True),
    "no processed data": ("store", ["promote", "1"], "data/processed/test.parquet: no test split", True),
    "predict, no store": ("empty", PREDICT, "no MLflow store at", True),
    "promote, no store": ("empty", ["promote", "1"], "no MLflow store at", True),
    "read-only project": ("read-only", ["run"], "is not writable by this user", True),
    "read-only store": ("read-only store", ["rollback"], "attempt to write a readonly database", False),
    "locked store": ("locked", ["models"], "database is locked", True),
}


def _snapshot(project: Path) -> dict[str, float]:
    return {str(p.relative_to(project)): p.stat().st_mtime for p in project.rglob("*")}


@pytest.mark.smoke  # ten real `tuneline` processes
def test_every_cli_misuse_ends_in_one_line_and_exit_2(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    _store(base)
    (tmp_path / "nochamp").mkdir()
    _store(tmp_path / "nochamp", champion=False)
    started, locks = {}, []
    for i, (name, (setup, args, _, _)) in enumerate(CASES.items()):
        project = tmp_path / f"case{i}"
        project.mkdir()
        if setup != "empty":
            shutil.copy2((tmp_path / "nochamp" if setup == "no champion" else base) / "mlflow.db", project / "mlflow.db")
        (project / "in.csv").write_text("text\nhello there\n")
        preexec = None
        if setup.startswith("read-only"):
            for p in (project / "mlflow.db", project / "in.csv", project) if setup == "read-only" else (project / "mlflow.db",):
                p.chmod(0o555 if p.is_dir() else 0o444)
            preexec = _no_write_access()
        if setup == "locked":
            db = sqlite3.connect(project / "mlflow.db", isolation_level=None)
            db.execute("BEGIN EXCLUSIVE")  # another process holds the store for longer than MLflow retries
            locks.append(db)
        before = _snapshot(project)
        proc = subprocess.Popen(["tuneline", *args], cwd=project, env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, preexec_fn=preexec)
        started[name] = (proc, project, before)
    failures = []
    for name, (proc, project, before) in started.items():
        output, _ = proc.communicate(timeout=240)
        _, args, expected, unchanged = CASES[name]
        lines = _lines(output)
        if proc.returncode != 2 or len(lines) != 1 or expected not in lines[0] or "Traceback" in output:
            failures.append(f"{name}: `tuneline {' '.join(args)}` exit {proc.returncode}, {len(lines)} lines:\n{output[-2000:]}")
        elif unchanged and _snapshot(project) != before:
            failures.append(f"{name}: changed the project: {sorted(set(_snapshot(project)) ^ set(before))}")
    for db in locks:
        db.close()
    for p in tmp_path.rglob("*"):  # let pytest clean up
        p.chmod(0o755 if p.is_dir() else 0o644)
    assert not failures, "\n\n".join(failures)
