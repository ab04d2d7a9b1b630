from tuneline.tasks._common import stage_task

validate_task = stage_task("validate", retries=0)
