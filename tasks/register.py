from tuneline.tasks._common import stage_task

# Not cached (side effects in MLflow), but idempotent: a retry reuses a registration made for the same inputs.
# The delays ride out a tracking server that is down for a restart.
register_task = stage_task("register", retries=3, retry_delay_seconds=[10, 30, 60], cached=False)
