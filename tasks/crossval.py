"""Cross-validation task: fold jobs mapped over Prefect's task runner when cv.parallel allows; with
tune.enabled, every trial of the search is a Prefect task too (tune.parallel at once)."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from tuneline.config import Config
from tuneline.pipeline import handoff
from tuneline.tasks._common import stage_task


@task(name="fold", cache_policy=NONE, persist_result=False)
def fold_task(run, job: dict) -> dict:
    return run(job)


@task(name="trial", cache_policy=NONE, persist_result=False)
def trial_task(run, handle) -> dict:
    return run(handle)


def _runner(config: Config, workers: int, kind: str):
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=config.cv.dask_address)
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=workers)


def _mapper(config: Config, task_fn, workers: int, kind: str, name: str):
    def map_all(run, items: list) -> list:
        if kind == "dask" and name == "job":  # in a hand-off job, Dask workers pull their inputs from the remote
            run = handoff.on_dask(run)
        with _runner(config, workers, kind) as runner:
            futures = [runner.submit(task_fn, {"run": run, name: item}) for item in items]
            return [f.result() for f in futures]

    return map_all


def fold_mapper(config: Config) -> dict:
    options = {}
    if config.tune.enabled:  # each trial a task, on threads (tune.parallel, within the cores) or the Dask cluster
        from tuneline.pipeline.tune import trial_workers

        options["map_trials"] = _mapper(config, trial_task, trial_workers(config), config.tune.task_runner, "handle")
    if config.cv.parallel == 1 and config.cv.task_runner == "thread":
        return options  # the step's own sequential loop for folds
    return options | {"map_jobs": _mapper(config, fold_task, config.cv.parallel, config.cv.task_runner, "job")}


crossval_task = stage_task("crossval", options=fold_mapper)
