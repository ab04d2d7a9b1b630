"""DVC experiments over the pipeline, as DVC users sweep: `dvc exp run -S` then `dvc exp show`, and a
sweep point queued with `dvc exp run --queue` and run by `dvc queue start` (README, "DVC experiments"): one
queued point, compared with the first experiment's, keeps the test to two pipeline runs."""
from __future__ import annotations

import csv
import io
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import FEATURES_OVERRIDES, venv_env
from tuneline.config import apply_overrides

pytestmark = pytest.mark.smoke
GIT = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}


def env(cwd) -> dict[str, str]:
    # one MLflow store for the workspace and the queue's temporary copies (as a team server would be): a new
    # SQLite store per experiment would spend most of its time creating its tables
    return venv_env() | GIT | {"MLFLOW_TRACKING_URI": f"sqlite:///{Path(cwd).resolve() / 'mlflow.db'}"}


def run(cmd: list[str], cwd, timeout=600) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env(cwd), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def experiments(cwd) -> list[dict]:
    """`dvc exp show` as rows: params and metrics by column name."""
    return list(csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--csv", "--no-pager"], cwd))))


def test_dvc_exp_run_set_param_and_a_queued_sweep(repo_copy):
    params = repo_copy / "params.yaml"
    params.write_text(yaml.safe_dump(apply_overrides(yaml.safe_load(params.read_text()), FEATURES_OVERRIDES), sort_keys=False))
    run(["git", "init", "-q"], repo_copy)
    run(["git", "add", "-A"], repo_copy)
    run(["git", "commit", "-qm", "project"], repo_copy)  # dvc exp needs a commit to branch from

    out = run(["dvc", "exp", "run", "-S", "train.head_c=0.5"], repo_copy)
    assert "Running stage 'crossval'" in out
    rows = experiments(repo_copy)
    (mine,) = [r for r in rows if r.get("train.head_c") == "0.5" and r["Experiment"]]
    assert 0.3 < float(mine["cv_f1_macro.mean"]) <= 1.0 and float(mine["test_f1_macro"]) > 0.3

    # the experiment's dvc.lock committed: queued experiments restore ingest..preprocess from the DVC cache
    run(["git", "add", "-A"], repo_copy)
    run(["git", "commit", "-qm", "head_c 0.5"], repo_copy)
    run(["dvc", "exp", "run", "--queue", "-S", "train.head_c=5.0"], repo_copy)
    try:
        sweep(repo_copy, float(mine["cv_f1_macro.mean"]))
    finally:
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=repo_copy, env=env(repo_copy), capture_output=True, timeout=120)


def sweep(repo_copy, first: float) -> None:
    # the worker it starts inherits its stdout: a file, not a pipe that `run` would wait on until the queue is done
    with open(repo_copy / "queue-start.log", "w") as log:
        subprocess.run(["dvc", "queue", "start"], cwd=repo_copy, env=env(repo_copy), stdout=log, stderr=subprocess.STDOUT,
                       check=True, timeout=120)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], repo_copy)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    assert "Failed" not in status, status + run(["dvc", "queue", "logs", status.split()[-1]], repo_copy)
    swept = {r["train.head_c"]: r for r in experiments(repo_copy) if r["Experiment"]}
    assert "5.0" in swept, swept.keys()  # the experiments of HEAD (its commit holds head_c 0.5)
    score = float(swept["5.0"]["cv_f1_macro.mean"])
    assert 0.3 < score <= 1.0 and score != first  # C changes the head: 5.0 scores otherwise than the first run's 0.5
