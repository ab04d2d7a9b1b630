"""Shared fixtures. Environment is set before prefect/mlflow are imported anywhere."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
_STATE = Path(tempfile.mkdtemp(prefix="tuneline-tests-"))

os.environ.setdefault("PREFECT_HOME", str(_STATE / "prefect"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["DVC_NO_ANALYTICS"] = "1"
os.environ["GX_ANALYTICS_ENABLED"] = "false"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.pop("MLFLOW_TRACKING_URI", None)

def shared_dataset(name: str) -> Path:
    """A dataset of ../shared/data, or a skip that says why: it lives beside the repo on the build
    machines (with its PROVENANCE.md), never in the repo or on a user's machine."""
    folder = SHARED_DATA / name
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: the shared test data (SST-2, TREC-6, HH-RLHF) sits beside the repo on the "
                    "build machines, not in it")
    return folder


# A small, fixed slice of the real default data keeps CPU tests fast (k=2, the default: two folds
# train on 240 rows each, where three trained on 320).
SMOKE_OVERRIDES = ["preprocess.sample_size=600", "cv.k=2"]
# For tests of what surrounds training (registry, DVC, the UI, orchestration), where which candidate
# wins is beside the point: one frozen-feature candidate, nothing fine-tuned.
FEATURES_OVERRIDES = SMOKE_OVERRIDES + ["select.strategies=[feature_extraction]", "select.baseline=false"]


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def run_pipeline(root: Path, overrides: list[str]):
    """The pipeline flow in-process with `root` as working directory: (results, flow run id)."""
    from tuneline.flows.pipeline import pipeline

    cwd = os.getcwd()
    os.chdir(root)
    try:
        state = pipeline(params=None, overrides=overrides, root=str(root), return_state=True)
    finally:
        os.chdir(cwd)
    return state.result(), state.state_details.flow_run_id


def repo_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    )
    return [f for f in out.stdout.splitlines() if (REPO / f).is_file()]


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """The project's files (as git sees them) copied into a fresh directory."""
    dest = tmp_path / "project"
    for rel in repo_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    return dest


def dvc_repro(project: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    """`dvc repro` in a copy of the repo whose params.yaml has `overrides` applied and whose dvc.yaml is
    the one `tuneline dvc-yaml` writes for them (the task's DAG); it must succeed and run every stage."""
    import yaml

    from tuneline.config import apply_overrides
    from tuneline.pipeline.stages import ORDER

    params = project / "params.yaml"
    params.write_text(yaml.safe_dump(apply_overrides(yaml.safe_load(params.read_text()), overrides), sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run(["tuneline", "dvc-yaml"], cwd=project, env=venv_env(), check=True, capture_output=True)
    proc = subprocess.run(["dvc", "repro"], cwd=project, env=venv_env(), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ORDER:
        assert f"Running stage '{name}'" in proc.stdout, name
    return proc


def venv_env() -> dict[str, str]:
    """Environment for subprocesses: this interpreter's scripts (tuneline, dvc) first on PATH."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 90.0, proc=None) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop_process(proc) -> None:
    """SIGINT, then SIGKILL: a Prefect/MLflow server may ignore the first signal."""
    import signal

    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=15)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=15)


@pytest.fixture(scope="session")
def prefect_api_url(tmp_path_factory):
    """A real `prefect server start` (temporary PREFECT_HOME, free port) for CLI subprocesses."""
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = free_port()
    env = venv_env() | {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false"}
    log = open(home / "server.log", "w")
    proc = subprocess.Popen(
        ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health", proc=proc)
        yield f"http://127.0.0.1:{port}/api"
    finally:
        stop_process(proc)
        log.close()


# Real team servers (MLflow basic-auth and Prefect, both on PostgreSQL) for the integration tier.
from team_servers import team_mlflow, team_prefect  # noqa: E402,F401
