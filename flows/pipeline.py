"""The pipeline flow: the same steps, in the same order, as dvc.yaml (a test checks).

Steps before registration are cached on their inputs (tasks/caching.py); fine-tuning runs here
or, with train.work_pool set, on that pool's `tuneline-finetune` deployment.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from prefect import flow

from tuneline.tracking import runs as tracking
from tuneline.config import load_config
from tuneline.pipeline import handoff
from tuneline.flows.finetune import library_logging
from tuneline.tasks.caching import run_step
from tuneline.tasks.crossval import crossval_task
from tuneline.tasks.finetune import check_deployment, finetune_remote
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
    library_logging()
    config = load_config(params, overrides or [])
    # Fail before any work when a server the run will need is not there.
    tracking.check_tracking(tracking.tracking_uri(Path(root)))
    if config.train.work_pool:
        check_deployment(config.train.work_pool)
    if config.train.handoff:
        handoff.check(config, Path(root))
    results = {}
    for name, step in (("ingest", ingest_task), ("validate", validate_task), ("preprocess", preprocess_task), ("select", select_task)):
        results[name] = run_step(step, config, root)
    if config.train.work_pool:
        results |= finetune_remote(config, params, overrides or [], root)
    else:
        results["crossval"] = run_step(crossval_task, config, root)
        results["refit"] = run_step(refit_task, config, root)
    results["register"] = register_task(config, root)
    results["promote"] = promote_task(config, root)
    return results
