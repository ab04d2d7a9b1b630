from tuneline.tasks._common import stage_task

promote_task = stage_task("promote", retries=2)
