"""Fold jobs through Prefect's task runners (threads, a Dask cluster) give the sequential numbers."""
from __future__ import annotations

import json

import pytest

from conftest import SMOKE_OVERRIDES
from tuneline.config import load_config
from tuneline.pipeline.shell import run_stage

pytestmark = pytest.mark.smoke


def cv_outputs(root) -> dict:
    cv = root / "data" / "cv"
    comparison = json.loads((cv / "comparison.json").read_text())
    for row in comparison["rows"]:
        row.pop("latency_ms"), row.pop("encoder_passes")  # measured cost (time, cache hits), not results
    return {"folds": json.loads((cv / "folds.json").read_text()), "comparison": comparison,
            "fold_metrics": {p.parent.name: json.loads(p.read_text()) for p in sorted((cv / "candidates").glob("*/fold_metrics.json"))}}


def test_sequential_threads_and_dask_agree(tmp_path, prefect_server):
    from distributed import LocalCluster
    from prefect import flow

    from tuneline.tasks.crossval import crossval_task

    base = load_config(None, SMOKE_OVERRIDES)
    for name in ("ingest", "validate", "preprocess", "select"):
        run_stage(name, base, tmp_path)

    @flow
    def cv_only(config, root: str):
        return crossval_task(config, root)

    results = {}
    run_stage("crossval", base, tmp_path)  # the DVC path: plain sequential loop
    results["sequential"] = cv_outputs(tmp_path)
    cv_only(load_config(None, SMOKE_OVERRIDES + ["cv.parallel=3"]), str(tmp_path))
    results["threads"] = cv_outputs(tmp_path)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        cv_only(load_config(None, SMOKE_OVERRIDES + ["cv.task_runner=dask", f"cv.dask_address={cluster.scheduler_address}"]), str(tmp_path))
    results["dask"] = cv_outputs(tmp_path)

    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    async def fold_runs():
        async with get_client() as client:
            runs = await client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="fold")))
        return [r for r in runs if r.state.is_completed()]

    assert len(asyncio.run(fold_runs())) >= 12  # 3 candidates x 2 folds, once on threads and once on Dask
    assert len(results["sequential"]["fold_metrics"]) == 3  # MiniLM features, MiniLM fine-tuned (auto), TF-IDF
    assert results["threads"] == results["sequential"]
    assert results["dask"] == results["sequential"]
    assert load_config(None, SMOKE_OVERRIDES).cv.seed == 42  # identical folds come from the same seed
    assert [len(f["val"]) for f in results["sequential"]["folds"]["folds"]] == [240, 240]
