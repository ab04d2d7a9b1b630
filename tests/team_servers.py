"""Team servers for the integration tier: MLflow (basic auth, PostgreSQL backend + auth store,
proxied artifact root) and Prefect (PostgreSQL, API auth string), plus a process work pool worker.

PostgreSQL itself is expected on 127.0.0.1:5432 with trust auth (user postgres). Every database
created here is dropped, every process started here is stopped, whatever the tests do.
Credentials are random per session, so a test can grep for them.
"""
from __future__ import annotations

import base64
import json
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest

from conftest import REPO, free_port, repo_files, stop_process, venv_env, wait_http
from services import PG_HOST, PG_PORT, require_postgres

PG = f"postgresql://postgres@{PG_HOST}:{PG_PORT}"


def sql(database: str, statement: str) -> list[tuple]:
    """Run one statement on the local PostgreSQL (autocommit: CREATE/DROP DATABASE need it)."""
    import psycopg

    with psycopg.connect(f"{PG}/{database}", autocommit=True, connect_timeout=10) as conn:
        cur = conn.execute(statement)
        return cur.fetchall() if cur.description else []


def psql(statement: str) -> None:
    sql("postgres", statement)


def create_database(prefix: str) -> str:
    name = f"{prefix}_{secrets.token_hex(4)}"
    psql(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def http(method: str, url: str, body: Optional[dict] = None, auth: Optional[tuple[str, str]] = None,
         timeout: float = 30) -> tuple[int, Any]:
    """(status, parsed JSON or text) of one request; HTTP errors are returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if auth is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw or b"null")
    except ValueError:
        return status, raw.decode(errors="replace")


@dataclass
class Server:
    """A server process that can be stopped and started again on the same port (fault tests)."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    health_url: str
    log_path: Path
    proc: Optional[subprocess.Popen] = None
    _log: Any = None

    def start(self, timeout: float = 120) -> None:
        self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_http(self.health_url, timeout=timeout, proc=self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(f"{self.name} did not start:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass
class TeamMLflow:
    server: Server
    uri: str
    user: str
    password: str
    admin_password: str
    secret_key: str
    databases: list[str] = field(default_factory=list)

    def client_env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_URI": self.uri, "MLFLOW_TRACKING_USERNAME": self.user, "MLFLOW_TRACKING_PASSWORD": self.password}

    @property
    def secrets(self) -> list[str]:
        return [self.password, self.admin_password, self.secret_key]


@dataclass
class TeamPrefect:
    server: Server
    api_url: str
    auth_string: str
    database: str

    def client_env(self) -> dict[str, str]:
        return {"PREFECT_API_URL": self.api_url, "PREFECT_API_AUTH_STRING": self.auth_string}

    @property
    def secrets(self) -> list[str]:
        return [self.auth_string.split(":", 1)[1]]

    def api(self, method: str, path: str, body: Optional[dict] = None) -> Any:
        status, data = http(method, f"{self.api_url}{path}", body, auth=tuple(self.auth_string.split(":", 1)))
        assert status < 300, f"{method} {path}: HTTP {status}: {data}"
        return data

    def flow_runs(self, flow_name: str, since: float) -> list[dict]:
        """Runs of a flow created after the epoch time `since`, oldest first."""
        from datetime import datetime, timezone

        after = datetime.fromtimestamp(since, timezone.utc).isoformat()
        runs = self.api("POST", "/flow_runs/filter", {"flows": {"name": {"any_": [flow_name]}}, "sort": "EXPECTED_START_TIME_ASC",
                                                      "flow_runs": {"expected_start_time": {"after_": after}}})
        return runs

    def task_runs(self, flow_run_id: str) -> list[dict]:
        runs = self.api("POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
        return sorted(runs, key=lambda r: r["start_time"] or r["expected_start_time"])

    def logs(self, flow_run_id: str) -> list[str]:
        out, offset = [], 0
        while True:
            page = self.api("POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200, "offset": offset})
            out += [r["message"] for r in page]
            if len(page) < 200:
                return out
            offset += 200


@pytest.fixture(scope="session")
def team_mlflow(tmp_path_factory):
    """`mlflow server --app-name basic-auth` on PostgreSQL (runs and users), artifacts proxied to a
    local folder; a non-admin user `tuneline-ci` for the pipeline."""
    require_postgres()
    home = tmp_path_factory.mktemp("team-mlflow")
    backend, auth_db = create_database("tuneline_mlflow"), create_database("tuneline_mlflow_auth")
    port = free_port()
    ini = home / "basic_auth.ini"
    ini.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = {PG}/{auth_db}\nadmin_username = admin\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                   # without it every request re-derives the PBKDF2 hash: registering a model (~100
                   # requests) costs ~30 s more on this 2-core machine
                   "auth_cache_ttl_seconds = 60\n")
    admin_password, secret_key, password = (secrets.token_urlsafe(18) for _ in range(3))
    env = venv_env() | {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
                        "MLFLOW_FLASK_SERVER_SECRET_KEY": secret_key}
    server = Server("MLflow", ["mlflow", "server", "--app-name", "basic-auth", "--backend-store-uri", f"{PG}/{backend}",
                               "--artifacts-destination", str(home / "artifacts"), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"],
                    env, f"http://127.0.0.1:{port}/health", home / "server.log")
    uri = f"http://127.0.0.1:{port}"
    try:
        server.start()
        status, body = http("POST", f"{uri}/api/2.0/mlflow/users/create", {"username": "tuneline-ci", "password": password},
                            auth=("admin", admin_password))
        assert status == 200, f"cannot create the MLflow user: HTTP {status} {body}"
        yield TeamMLflow(server, uri, "tuneline-ci", password, admin_password, secret_key, [backend, auth_db])
    finally:
        server.stop()
        for db in (backend, auth_db):
            drop_database(db)


@pytest.fixture(scope="session")
def team_prefect(tmp_path_factory):
    """`prefect server start` on PostgreSQL with an API auth string."""
    require_postgres()
    home = tmp_path_factory.mktemp("team-prefect")
    db = create_database("tuneline_prefect")
    port = free_port()
    auth = f"tuneline:{secrets.token_urlsafe(18)}"
    env = venv_env() | {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
                        "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}",
                        "PREFECT_SERVER_API_AUTH_STRING": auth}
    server = Server("Prefect", ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                    env, f"http://127.0.0.1:{port}/api/health", home / "server.log")
    try:
        server.start()
        yield TeamPrefect(server, f"http://127.0.0.1:{port}/api", auth, db)
    finally:
        server.stop()
        drop_database(db)


def client_env(prefect: TeamPrefect, mlflow: Optional[TeamMLflow], home: Path, **extra: str) -> dict[str, str]:
    """Environment of a team member's process: both servers and their credentials, nothing else."""
    env = venv_env() | prefect.client_env() | {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_SERVER_API_AUTH_STRING", None)
    if mlflow is not None:
        env |= mlflow.client_env()
    return env | extra


def prefect_cli(env: dict[str, str], *args: str, cwd: Optional[Path] = None, timeout: float = 180) -> str:
    proc = subprocess.run(["prefect", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"prefect {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def make_project(dest: Path, overrides: list[str]) -> Path:
    """A checkout of the project (files as git sees them) with `overrides` written into params.yaml."""
    import shutil

    import yaml

    from tuneline.config import apply_overrides

    for rel in repo_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    params = dest / "params.yaml"
    params.write_text(yaml.safe_dump(apply_overrides(yaml.safe_load(params.read_text()), overrides), sort_keys=False))
    return dest


def run_pipeline(project: Path, env: dict, *overrides: str, timeout: float = 900) -> tuple[subprocess.CompletedProcess, float]:
    """`tuneline run` as a team member's process: (the finished process, its wall time in seconds)."""
    cmd = ["tuneline", "run", *sum((["--set", o] for o in overrides), [])]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - start


def kill_flow_run_processes(worker: subprocess.Popen) -> list[int]:
    """SIGKILL what the worker started (the flow-run process): a lost machine, an OOM kill."""
    import psutil

    children = psutil.Process(worker.pid).children(recursive=True)
    for child in children:
        child.send_signal(signal.SIGKILL)
    psutil.wait_procs(children, timeout=30)
    return [c.pid for c in children]


def step(task_run: dict) -> str:
    """A task run's step name ('register-3f2' -> 'register')."""
    return task_run["name"].rsplit("-", 1)[0]


def psql_rows(database: str, statement: str) -> list[str]:
    """The first column of each row, as text."""
    return [str(row[0]) for row in sql(database, statement)]
