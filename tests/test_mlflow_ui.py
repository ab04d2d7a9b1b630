"""The MLflow UI, served by a real `mlflow server`, shows tuneline's runs with their metric columns
and compares the fold runs (headless Chromium; screenshots kept in tests/artifacts/)."""
from __future__ import annotations

import json
import subprocess
import urllib.parse

import pytest

from browser import dump_dom, screenshot
from conftest import FEATURES_OVERRIDES, free_port, stop_process, venv_env, wait_http
from services import require_chromium
from tuneline.config import load_config
from tuneline.pipeline.shell import run_stage
from tuneline.pipeline.stages import ORDER

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served_run(tmp_path_factory):
    require_chromium()  # before the pipeline run, not after it
    root = tmp_path_factory.mktemp("ui")
    config = load_config(None, FEATURES_OVERRIDES)
    results = {name: run_stage(name, config, root) for name in ORDER}
    port = free_port()
    proc = subprocess.Popen(
        ["mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=root, env=venv_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc=proc)
        yield f"http://127.0.0.1:{port}", results, root
    finally:
        stop_process(proc)


def test_experiment_page_lists_runs_with_metric_columns(served_run, tmp_path):
    url, results, _ = served_run
    reg = results["register"]
    page = f"{url}/#/experiments/{reg['experiment_id']}/runs?viewStateShareKey=tuneline"
    dom = dump_dom(page, tmp_path, wait_ms=30000)
    from mlflow import MlflowClient

    run_name = MlflowClient(tracking_uri=url).get_run(reg["run_id"]).info.run_name
    assert run_name in dom
    for metric in ("cv_f1_macro_mean", "cv_accuracy_mean", "test_accuracy"):
        assert f'col-id="metrics.`{metric}`"' in dom, metric
    test_accuracy = results["refit"]["test_accuracy"]
    assert f"{test_accuracy:.4f}"[:5] in dom  # the value is in the table, not only the header
    png = screenshot(page, tmp_path, "mlflow_experiment_runs.png", size="1800,1000", wait_ms=30000)
    assert png.stat().st_size > 30_000


def test_compare_view_of_the_fold_runs_renders(served_run, tmp_path):
    from mlflow import MlflowClient

    url, results, _ = served_run
    client = MlflowClient(tracking_uri=url)
    reg = results["register"]
    exp = reg["experiment_id"]
    winner = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{reg['run_id']}' and tags.candidate = "
                                f"'{results['crossval']['winner']['name']}'")[0]
    folds = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{winner.info.run_id}'")
    assert len(folds) == 2
    ids = json.dumps([f.info.run_id for f in folds])
    page = f"{url}/#/compare-runs?runs={urllib.parse.quote(ids)}&experiments={urllib.parse.quote(json.dumps([exp]))}"
    dom = dump_dom(page, tmp_path, wait_ms=30000)
    assert "Comparing 2 Runs" in dom
    for f in folds:
        assert f.info.run_name in dom
    assert "f1_macro" in dom and "accuracy" in dom
    png = screenshot(page, tmp_path, "mlflow_compare_folds.png", size="1600,1200", wait_ms=30000)
    assert png.stat().st_size > 30_000
