"""`dvc repro` in a temporary copy of the repository runs every stage, then reproduces nothing."""
from __future__ import annotations

import subprocess

import pytest
import yaml

from conftest import FEATURES_OVERRIDES, venv_env
from tuneline.config import apply_overrides

pytestmark = pytest.mark.smoke


def run(cmd: list[str], cwd, timeout=900) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=venv_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def test_dvc_repro_then_noop(repo_copy):
    params = repo_copy / "params.yaml"
    params.write_text(yaml.safe_dump(apply_overrides(yaml.safe_load(params.read_text()), FEATURES_OVERRIDES), sort_keys=False))
    run(["git", "init", "-q"], repo_copy)
    first = run(["dvc", "repro"], repo_copy)
    from tuneline.pipeline.stages import ORDER

    for name in ORDER:
        assert f"Running stage '{name}'" in first, name
    second = run(["dvc", "repro"], repo_copy)
    assert "Running stage" not in second
    assert "up to date" in second.lower()

    # The lineage tags on the MLflow run are the hashes dvc.lock records.
    from mlflow import MlflowClient

    lock = yaml.safe_load((repo_copy / "dvc.lock").read_text())["stages"]
    lock_md5 = {o["path"]: o["md5"] for s in lock.values() for o in s.get("outs", [])}
    reg = yaml.safe_load((repo_copy / "data" / "registry" / "registration.json").read_text())
    tags = MlflowClient(tracking_uri=f"sqlite:///{repo_copy / 'mlflow.db'}").get_run(reg["run_id"]).data.tags
    assert tags["dvc.md5.raw"] == lock_md5["data/raw/dataset.parquet"]
    assert tags["dvc.md5.train"] == lock_md5["data/processed/train.parquet"]

    # The default local remote works offline.
    run(["dvc", "push"], repo_copy)
    assert any((repo_copy / "dvc-storage").rglob("*"))


def test_a_users_data_file_configured_in_params_reruns_ingest_when_it_changes(repo_copy, tmp_path):
    """Configure data.source, `tuneline dvc-yaml`: no hand edit of dvc.yaml, no `dvc add`."""
    source = tmp_path / "mine.csv"
    source.write_text("text,sentiment\n" + "".join(f"text {i},{'pos' if i % 2 else 'neg'}\n" for i in range(60)))
    params = repo_copy / "params.yaml"
    params.write_text(yaml.safe_dump(apply_overrides(yaml.safe_load(params.read_text()), [f"data.source={source}"]), sort_keys=False))
    run(["git", "init", "-q"], repo_copy)
    stale = run(["tuneline", "stage", "ingest"], repo_copy)
    assert "tuneline dvc-yaml" in stale  # the committed DAG does not know the user's file
    run(["tuneline", "dvc-yaml"], repo_copy)
    first = run(["dvc", "repro", "ingest"], repo_copy)
    assert "Running stage 'ingest'" in first and "tuneline dvc-yaml" not in first
    assert "up to date" in run(["dvc", "status", "ingest"], repo_copy).lower()
    source.write_text(source.read_text() + "one more,pos\n")
    status = run(["dvc", "status", "ingest"], repo_copy)
    assert "modified" in status and str(source) in status
