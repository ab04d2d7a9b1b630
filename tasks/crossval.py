"""Cross-validation task: fold jobs mapped over Prefect's task runner when cv.parallel allows."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from tuneline.config import Config
from tuneline.tasks._common import stage_task


@task(name="fold", cache_policy=NONE, persist_result=False)
def fold_task(run, job: dict) -> dict:
    return run(job)


def _runner(config: Config):
    if config.cv.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=config.cv.dask_address)
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=config.cv.parallel)


def fold_mapper(config: Config) -> dict:
    if config.cv.parallel == 1 and config.cv.task_runner == "thread":
        return {}  # the step's own sequential loop

    def map_jobs(run, jobs: list[dict]) -> list[dict]:
        with _runner(config) as runner:
            futures = [runner.submit(fold_task, {"run": run, "job": job}) for job in jobs]
            return [f.result() for f in futures]

    return {"map_jobs": map_jobs}


crossval_task = stage_task("crossval", options=fold_mapper)
