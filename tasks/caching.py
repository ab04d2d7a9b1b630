"""Prefect caching for pipeline steps: a rerun with unchanged inputs skips finished steps.

The key of a step is tuneline.pipeline.fingerprint.stage_key: hashes of the files it reads, the config
sections it reads and the project's code. Results are persisted under the project root
(`.cache/prefect-results`, shared with a work pool that sees the same storage) unless
PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK names a team store (e.g. an S3 bucket block).

A cached result is used only while the step's outputs are still on disk exactly as that run
wrote them (the manifest in `.cache/stages/`): run_step then runs the step and rewrites the cache
entry (`refresh_cache`). A task called without run_step never reuses a result whose outputs are
gone either (its key function returns no key), it just takes one more run to be cached.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from tuneline.pipeline import fingerprint

RESULTS_DIR = ".cache/prefect-results"


def stage_cache_key(context, parameters: dict[str, Any]) -> Optional[str]:
    name, config, root = context.task.name, parameters["config"], Path(parameters["root"])
    key = fingerprint.stage_key(name, config, root)
    if context.task.refresh_cache or fingerprint.outputs_current(name, config, root, key):
        return f"{name}-{key}"
    return None  # outputs missing or changed since the cached run: run the step, reuse nothing


def result_storage(root: str | os.PathLike) -> Optional[Path]:
    if os.environ.get("PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"):
        return None  # the team's configured store
    return Path(root).resolve() / RESULTS_DIR


def run_step(step, config, root: str, **call):
    """Call a step's task: reuse its cached result only while the outputs it recorded are intact,
    else run it and overwrite the entry; results are kept under the project root (result_storage)."""
    if getattr(step, "cache_key_fn", None) is not stage_cache_key:
        return step(config, root, **call)
    key = fingerprint.stage_key(step.name, config, Path(root))
    options = {"refresh_cache": not fingerprint.outputs_current(step.name, config, Path(root), key)}
    if (storage := result_storage(root)) is not None:
        options["result_storage"] = storage
    return step.with_options(**options)(config, root, **call)


def record_run(name: str, config, root: str) -> None:
    """After a step ran: its key and the outputs it wrote (what a later cache hit must still find)."""
    fingerprint.record(name, config, Path(root), fingerprint.stage_key(name, config, Path(root)))
