"""The fine-tuning flow: cross-validation and refit, the part of the pipeline that wants a GPU.

Deployed on its own to the `gpu` work pool (prefect.yaml); the pipeline flow runs it there through
`run_deployment` when train.work_pool is set. Paths in, paths out: `root` and `result_path` are on
storage the pipeline also sees.
"""
from __future__ import annotations

import logging
from typing import Optional

from prefect import flow

from tuneline.config import load_config
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
             result_path: Optional[str] = None) -> dict:
    """Score the selected candidates on k folds, refit the winner; write the results to `result_path`."""
    library_logging()
    config = load_config(params, overrides or [])
    results = {"crossval": run_step(crossval_task, config, root), "refit": run_step(refit_task, config, root)}
    if result_path:
        write_json(result_path, results)
    return results
