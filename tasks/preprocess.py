from tuneline.tasks._common import stage_task

preprocess_task = stage_task("preprocess", retries=0)
