"""The promotion flow: gate the version that the last pipeline run registered against the champion.

For a manual or event-triggered deployment (prefect.yaml `tuneline-promote/manual`), e.g. after the
champion changed or the test split was refreshed; the pipeline flow runs the same task itself.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from prefect import flow

from tuneline.tracking import runs as tracking
from tuneline.config import load_config
from tuneline.tasks.promote import promote_task


@flow(name="tuneline-promote")
def promote(params: Optional[str] = "params.yaml", overrides: Optional[list[str]] = None, root: str = ".") -> dict:
    config = load_config(params, overrides or [])
    tracking.check_tracking(tracking.tracking_uri(Path(root)))
    return promote_task(config, root)
