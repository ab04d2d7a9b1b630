from tuneline.tasks._common import stage_task

select_task = stage_task("select", retries=0)
