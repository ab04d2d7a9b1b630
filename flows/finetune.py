"""The fine-tuning flow: cross-validation and refit, the part of the pipeline that wants a GPU.

Deployed on its own to the `gpu` work pool (prefect.yaml); the pipeline flow runs it there through
`run_deployment` when train.work_pool is set. Two ways to meet: on a shared mount (`root` and
`result_path` are paths both sides see), or, with train.handoff, through a DVC remote: `handoff` then
carries only content keys and the pipeline's code digest, and `root` is this worker's own checkout
(tuneline.pipeline.handoff).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from prefect import flow

from tuneline.config import load_config
from tuneline.pipeline import handoff as remote
from tuneline.storage import write_json
from tuneline.tasks.caching import run_step
from tuneline.tasks.crossval import crossval_task
from tuneline.tasks.refit import refit_task


def library_logging() -> None:
    """A flow run started by a worker has no CLI to configure logging: keep the library's INFO lines
    (resumed checkpoints, reused folds); PREFECT_LOGGING_EXTRA_LOGGERS=tuneline sends them to the UI."""
    lib = logging.getLogger("tuneline")
    if lib.level == logging.NOTSET:
        lib.setLevel(logging.INFO)


@flow(name="tuneline-finetune")
def finetune(params: Optional[str] = "params.yaml", overrides: Optional[list[str]] = None, root: str = ".",
             result_path: Optional[str] = None, handoff: Optional[dict] = None) -> dict:
    """Score the selected candidates on k folds, refit the winner; write the results to `result_path`
    (shared mount) or push them with the outputs to the hand-off remote (`handoff`: a job's keys)."""
    library_logging()
    if handoff:
        store, config = remote.take(handoff, Path(root))
        with remote.running(handoff, store):
            results = _steps(config, str(store.root))
        remote.finish(store, config, handoff, results)
        return results
    results = _steps(load_config(params, overrides or []), root)
    if result_path:
        write_json(result_path, results)
    return results


def _steps(config, root: str) -> dict:
    return {"crossval": run_step(crossval_task, config, root), "refit": run_step(refit_task, config, root)}
