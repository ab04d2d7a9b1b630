"""Promotion against a real MLflow registry (SQLite store): races, rollback, batch predict."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import FEATURES_OVERRIDES, venv_env
from tuneline.config import load_config
from tuneline.pipeline.shell import run_stage

pytestmark = pytest.mark.smoke
NAME = "tuneline-classifier"


def set_head(model_dir: Path, weight: np.ndarray, bias: np.ndarray) -> None:
    from tuneline.classification.head import LinearHead

    LinearHead(weight, bias).save(model_dir / "head.safetensors")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project whose registry holds v1 (random head, champion), v2 (the trained head) and
    v3 (the trained head with class 'positive' switched off); the head is the frozen-feature candidate's."""
    from tuneline.classification.head import LinearHead

    root = tmp_path_factory.mktemp("registry")
    config = load_config(None, FEATURES_OVERRIDES)
    for name in ("ingest", "validate", "preprocess", "select", "crossval", "refit"):
        run_stage(name, config, root)
    model_dir = root / config.paths.model_dir
    trained = LinearHead.load(model_dir / "head.safetensors")
    rng = np.random.default_rng(0)
    set_head(model_dir, rng.normal(size=trained.weight.shape), np.zeros_like(trained.bias))
    run_stage("register", config, root)
    run_stage("promote", config, root)  # v1: first model → champion, though it is a random head
    set_head(model_dir, trained.weight, trained.bias)
    run_stage("register", config, root)  # v2
    collapsed = trained.bias.copy()
    collapsed[2] = -1e4
    set_head(model_dir, trained.weight, collapsed)
    run_stage("register", config, root)  # v3
    set_head(model_dir, trained.weight, trained.bias)
    return root, config


def aliases(root: Path) -> dict[str, str]:
    from mlflow import MlflowClient

    model = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}").get_registered_model(NAME)
    return {a: str(v) for a, v in model.aliases.items()}


def stage(root: Path, version: str) -> str:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}").get_model_version(NAME, version).current_stage


def cli(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["tuneline", *args]
    for o in FEATURES_OVERRIDES:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, cwd=root, env=venv_env(), capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode in (0, 3), proc.stdout + proc.stderr
    return proc


def test_two_promotions_racing_leave_one_champion_the_better_one(project):
    root, _ = project
    assert aliases(root)["champion"] == "1"
    procs = [subprocess.Popen(["tuneline", "promote", v, *sum((["--set", o] for o in FEATURES_OVERRIDES), [])],
                              cwd=root, env=venv_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for v in ("3", "2")]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 3], outputs  # exactly one promoted, one refused by the gate
    a = aliases(root)
    assert a["champion"] == "2" and a["previous"] == "1", (a, outputs)
    assert "3" not in (a["champion"], a["previous"])
    assert stage(root, "2") == "Production" and stage(root, "1") == "Archived" and stage(root, "3") == "Staging"
    refused = outputs[codes.index(3)]
    assert "'positive'" in refused or "worse" in refused  # v3 lost because class 'positive' collapsed


def test_rollback_restores_the_earlier_champion_and_stage(project):
    root, _ = project
    before = aliases(root)
    proc = cli(root, "rollback")
    assert proc.returncode == 0
    a = aliases(root)
    assert a["champion"] == before["previous"] == "1" and "previous" not in a
    assert stage(root, "1") == "Production" and stage(root, "2") == "Archived"
    # and forward again, through the gate: v2 beats v1 on the same test split
    assert cli(root, "promote", "2").returncode == 0
    assert aliases(root)["champion"] == "2"


def test_predict_with_champion_in_a_fresh_process_reproduces_the_logged_accuracy(project, tmp_path):
    import pandas as pd
    from mlflow import MlflowClient

    root, config = project
    assert aliases(root)["champion"] == "2"
    out = tmp_path / "pred.parquet"
    test_path = root / config.paths.processed_dir / "test.parquet"
    proc = cli(root, "predict", "--model", f"models:/{NAME}@champion", str(test_path), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    pred = pd.read_parquet(out)
    accuracy = float((pred["predicted_label"] == pred["label"]).mean())
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    run_id = client.get_model_version(NAME, "2").run_id
    assert accuracy == client.get_run(run_id).data.metrics["test_accuracy"]
    probs = pred[[c for c in pred.columns if c.startswith("p_")]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)


def test_champion_with_missing_artifacts_is_replaced_by_a_sound_challenger(project, tmp_path):
    from mlflow import MlflowClient

    root, config = project
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    champion = client.get_model_version_by_alias(NAME, "champion")
    source = Path(client.get_model_version_download_uri(NAME, champion.version).replace("file://", ""))
    backup = tmp_path / "backup"
    shutil.move(str(source), backup)
    try:
        proc = cli(root, "promote", "3")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "cannot be re-scored" in proc.stdout
        assert aliases(root)["champion"] == "3" and aliases(root)["previous"] == str(champion.version)
    finally:
        shutil.move(str(backup), source)


def test_failed_training_registers_nothing(tmp_path, prefect_server):
    import os

    from tuneline.flows.pipeline import pipeline

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(ValueError, match="cv.k=200 but the smallest class"):
            pipeline(params=None, overrides=["preprocess.sample_size=600", "cv.k=200"], root=str(tmp_path))
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "models").exists()
