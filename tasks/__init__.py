"""Prefect @task wrappers, one module per pipeline step. Logic lives in tuneline.pipeline.shell."""
