from tuneline.tasks._common import stage_task

register_task = stage_task("register", retries=2)
