from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from prefect import task
from prefect.cache_policies import NONE

from tuneline.config import Config
from tuneline.pipeline.shell import run_stage
from tuneline.tasks.caching import record_run, stage_cache_key


def stage_task(
    name: str,
    retries: int = 0,
    options: Optional[Callable[[Config], dict]] = None,
    report: Optional[Callable[[Config, Path], None]] = None,
    cached: bool = True,
    retry_delay_seconds: int | list[int] = 5,
):
    """A task that runs one pipeline step; tasks pass a config object and a root path only.
    `options(config)` gives extra keyword arguments for the step (e.g. how to schedule fold jobs);
    `report(config, root)` publishes Prefect artifacts after the step, whether it passed or failed.
    `cached`: keyed by the step's inputs, params and code (tasks/caching.py); call it through
    caching.run_step. Steps with side effects outside the project (register, promote) are not."""
    caching = dict(cache_key_fn=stage_cache_key, persist_result=True) if cached else dict(cache_policy=NONE, persist_result=False)

    @task(name=name, retries=retries, retry_delay_seconds=retry_delay_seconds, **caching)
    def _run(config: Config, root: str) -> dict:
        try:
            result = run_stage(name, config, Path(root), **(options(config) if options else {}))
            if cached:
                record_run(name, config, root)
            return result
        finally:
            if report is not None:
                report(config, Path(root))

    return _run
