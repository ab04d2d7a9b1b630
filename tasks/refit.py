from tuneline.tasks._common import stage_task

refit_task = stage_task("refit", retries=0)
