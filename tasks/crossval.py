from tuneline.tasks._common import stage_task

crossval_task = stage_task("crossval", retries=0)
