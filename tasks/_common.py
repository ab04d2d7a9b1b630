from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from tuneline.config import Config
from tuneline.stages import run_stage


def stage_task(name: str, retries: int = 0):
    """A task that runs one pipeline step; tasks pass a config object and a root path only."""

    @task(name=name, retries=retries, retry_delay_seconds=5, cache_policy=NONE, persist_result=False)
    def _run(config: Config, root: str) -> dict:
        return run_stage(name, config, Path(root))

    return _run
