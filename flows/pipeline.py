"""The pipeline flow: the same steps, in the same order, as dvc.yaml (a test checks)."""
from __future__ import annotations

from typing import Optional

from prefect import flow

from tuneline.config import load_config
from tuneline.tasks.crossval import crossval_task
from tuneline.tasks.ingest import ingest_task
from tuneline.tasks.preprocess import preprocess_task
from tuneline.tasks.promote import promote_task
from tuneline.tasks.refit import refit_task
from tuneline.tasks.register import register_task
from tuneline.tasks.select import select_task
from tuneline.tasks.validate import validate_task


@flow(name="tuneline-pipeline")
def pipeline(params: Optional[str] = "params.yaml", overrides: Optional[list[str]] = None, root: str = ".") -> dict:
    """Run every step; `params` None means the embedded defaults."""
    config = load_config(params, overrides or [])
    results = {}
    for name, step in (
        ("ingest", ingest_task), ("validate", validate_task), ("preprocess", preprocess_task),
        ("select", select_task), ("crossval", crossval_task), ("refit", refit_task),
        ("register", register_task), ("promote", promote_task),
    ):
        results[name] = step(config, root)
    return results
