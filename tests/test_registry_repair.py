"""Registry operations that die half-way, and stores that are shared or created at once, on real
MLflow SQLite stores with real processes: a `tuneline` process is SIGKILLed at an exact point
(TUNELINE_FAULT names it; the process kills itself), then the next run or `tuneline gc` mends what
it left. The projects are laid out as the earlier steps leave them (no training)."""
from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import venv_env
from llm_fixtures import registrable_classifier_project

pytestmark = pytest.mark.smoke
NAME = "tuneline-classifier"


def _tuneline(root: Path, *args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = venv_env() | ({"TUNELINE_FAULT": fault} if fault else {})
    return subprocess.run(["tuneline", *args], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def _client(root: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def _state(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(alias -> version, version -> stage) of the classifier's registered model."""
    c = _client(root)
    aliases = {a: str(v) for a, v in c.get_registered_model(NAME).aliases.items()}
    return aliases, {str(v.version): v.current_stage for v in c.search_model_versions(f"name = '{NAME}'")}


def _write_baseline(config, root: Path, texts: list[str], labels: list[str]) -> None:
    """A real, loadable model in the project's model folder: the TF-IDF baseline, fitted in a moment."""
    from tuneline.classification.baseline import TfidfClassifier, build
    from tuneline.classification.modelio import write_meta

    names = sorted(set(labels))
    pipe = build("none", 0).fit(texts, [names.index(label) for label in labels])
    model_dir = root / config.paths.model_dir
    TfidfClassifier.from_pipeline(pipe, len(names)).save(model_dir)
    write_meta(model_dir, "baseline", names, config.train, "tfidf")


def test_a_kill_during_promote_is_repaired_by_the_next_promote(tmp_path, caplog):
    from tuneline.pipeline.shell import run_stage
    from tuneline.storage import read_json, write_json

    config = registrable_classifier_project(tmp_path)
    run_stage("register", config, tmp_path)
    run_stage("promote", config, tmp_path)  # v1: the first model, champion and Production
    metrics = tmp_path / config.paths.eval_dir / "metrics.json"
    write_json(metrics, read_json(metrics) | {"test_accuracy": 0.71})  # other inputs: a second version
    assert run_stage("register", config, tmp_path)["version"] == "2"

    killed = _tuneline(tmp_path, "stage", "promote", fault="after-alias")
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    aliases, stages = _state(tmp_path)  # what the kill left: the alias moved, the stages did not
    assert aliases["champion"] == "2" and stages == {"1": "Production", "2": "None"}

    caplog.set_level(logging.WARNING, logger="tuneline")
    decision = run_stage("promote", config, tmp_path)
    assert decision["reason"] == "version 2 is already champion" and len(decision["repaired"]) == 2
    aliases, stages = _state(tmp_path)
    assert aliases == {"champion": "2", "previous": "1"} and stages == {"1": "Archived", "2": "Production"}
    assert "champion version 2 was without a stage, now Production" in caplog.text
    assert "version 1 was Production but is not champion, now Archived" in caplog.text
    assert run_stage("promote", config, tmp_path)["repaired"] == []  # consistent now: nothing more to mend


def test_a_kill_during_register_leaves_nothing_half_registered_and_gc_removes_its_files(tmp_path, caplog, capsys, monkeypatch):
    from tuneline import cli
    from tuneline.config import load_config
    from tuneline.pipeline.shell import run_stage
    from tuneline.tracking import runs as tracking

    registrable_classifier_project(tmp_path)
    killed = _tuneline(tmp_path, "stage", "register", fault="after-log-model")
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    c, uri = _client(tmp_path), tracking.tracking_uri(tmp_path)
    (bare,) = c.search_model_versions(f"name = '{NAME}'")
    dead = c.get_run(bare.run_id)
    assert dead.info.status == "RUNNING" and tracking.REGISTRATION_KEY not in bare.tags
    with pytest.raises(LookupError, match=f"{NAME} version 1 is not a complete tuneline registration"):
        tracking.check_version(uri, NAME, "1", "classification")  # what `tuneline promote 1` says

    caplog.set_level(logging.WARNING, logger="tuneline")
    other = run_stage("register", load_config(None, ["preprocess.sample_size=1500"]), tmp_path)  # other params, other key
    versions = c.search_model_versions(f"name = '{NAME}'")
    assert [str(v.version) for v in versions] == [other["version"]] != ["1"]
    assert all(tracking.REGISTRATION_KEY in v.tags for v in versions)
    assert f"deleting half-registered {NAME} version 1" in caplog.text
    exp = c.get_experiment_by_name("tuneline").experiment_id
    assert not c.search_runs([exp], "attributes.status = 'RUNNING'")  # the killed run and its children: FAILED
    children = c.search_runs([exp], f"tags.`mlflow.parentRunId` = '{dead.info.run_id}'")
    assert c.get_run(dead.info.run_id).info.status == "FAILED" and children
    assert {r.info.status for r in children} == {"FAILED"}

    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert cli.main(["gc"]) == 0  # the command itself, in this process: a dry run
    listed = capsys.readouterr().out
    model_dir = next(p for p in (tmp_path / "mlartifacts" / "models").iterdir()
                     if c.get_logged_model(p.name).source_run_id == dead.info.run_id)
    for folder in (tmp_path / "mlartifacts" / dead.info.run_id, model_dir):
        assert folder.is_dir() and f"{folder}  (" in listed, listed
    assert dead.info.run_id in listed and "`tuneline gc --apply` removes them" in listed
    assert other["run_id"] not in listed

    assert cli.main(["gc", "--apply"]) == 0
    assert not (tmp_path / "mlartifacts" / dead.info.run_id).exists() and not model_dir.exists()
    assert c.get_run(dead.info.run_id).info.lifecycle_stage == "deleted"
    tracking.check_version(uri, NAME, other["version"], "classification")  # the live registration is untouched
    assert (tmp_path / "mlartifacts" / other["run_id"]).is_dir()
    from tuneline.tracking.cleanup import gc

    assert gc(uri, "tuneline") == [f"nothing to clean in experiment 'tuneline' of {uri}"]


STARTER = """
import sys, time
from pathlib import Path
import mlflow.store.model_registry.sqlalchemy_store, mlflow.store.tracking.sqlalchemy_store  # the slow imports, first
from tuneline.tracking import runs
uri, me = sys.argv[1], Path(sys.argv[2])
me.touch()
while not me.with_name("go").exists():  # all make their first store call at the same instant
    time.sleep(0.01)
print(runs.ensure_experiment(uri, "tuneline", Path(".")), runs.client(uri).search_registered_models())
"""


def test_processes_creating_one_new_store_at_once_all_succeed(tmp_path):
    uri, n = f"sqlite:///{tmp_path / 'mlflow.db'}", 2
    ready = [tmp_path / f"ready{i}" for i in range(n)]
    procs = [subprocess.Popen([sys.executable, "-c", STARTER, uri, str(r)], cwd=tmp_path, env=venv_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in ready]
    deadline = time.monotonic() + 180
    while not all(r.exists() for r in ready) and time.monotonic() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    (tmp_path / "go").touch()
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * n, "\n---\n".join(outputs)
    assert len({o.strip().splitlines()[-1] for o in outputs}) == 1  # one experiment, the same id for all
    assert len(_client(tmp_path).search_experiments(filter_string="name = 'tuneline'")) == 1


def test_a_shared_store_outlives_the_project_that_created_it(tmp_path, monkeypatch, caplog):
    import mlflow
    import pandas as pd

    from tuneline.pipeline.shell import run_stage
    from tuneline.tracking import runs as tracking

    shared = tmp_path / "team"
    shared.mkdir()
    uri = f"sqlite:///{shared / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    texts = ["good film", "great film", "good fun", "bad film", "awful film", "bad fun"] * 2
    versions = {}
    for project, labels in (("first", ["x"] * 3 + ["y"] * 3), ("second", ["y"] * 3 + ["x"] * 3)):
        root = tmp_path / project
        config = registrable_classifier_project(root)
        _write_baseline(config, root, texts, labels * 2)
        versions[project] = run_stage("register", config, root)["model_uri"]
    exp = tracking.client(uri).get_experiment_by_name("tuneline")
    assert exp.artifact_location == (shared / "mlartifacts").as_uri()
    assert not (tmp_path / "first" / "mlartifacts").exists() and not (tmp_path / "second" / "mlartifacts").exists()

    shutil.rmtree(tmp_path / "first")
    with tracking.scoped(uri):
        predicted = {p: mlflow.pyfunc.load_model(m).predict(pd.DataFrame({"text": ["good film", "bad film"]}))["label"].tolist()
                     for p, m in versions.items()}
    assert predicted == {"first": ["x", "y"], "second": ["y", "x"]}  # both still load, each its own model

    # an experiment made before this change keeps its folder; the warning says how to move it
    old = tmp_path / "legacy-project" / "mlartifacts"
    tracking.client(uri).create_experiment("old", artifact_location=old.as_uri())
    caplog.set_level(logging.WARNING, logger="tuneline")
    tracking.ensure_experiment(uri, "old", tmp_path / "second")
    assert f"keeps its artifacts in {old}, outside this project (in another project?)" in caplog.text
    assert "To move them: set tracking.experiment to a new name" in caplog.text and str(shared / "mlartifacts") in caplog.text
