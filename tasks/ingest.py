from tuneline.tasks._common import stage_task

ingest_task = stage_task("ingest", retries=0)
