"""Fine-tuning on a work pool: the pipeline hands crossval + refit to the `tuneline-finetune`
deployment of `train.work_pool` (e.g. a GPU machine's worker), waits, and continues with its result.

Both sides pass paths, never objects. Without train.handoff the project root, the params file and a
result file must be on storage both see (the same mount). With train.handoff (a DVC remote both
reach) nothing is shared but that remote: the inputs go there by content hash, the deployment gets
only the keys, and the outputs come back hash-checked (tuneline.pipeline.handoff).
A lost worker or a killed flow-run process ends the child run Crashed: this task is retried, the
child starts again, finished steps are cache hits, finished folds are reused and the interrupted
fine-tune continues from its last checkpoint.

The task is cached like a step (its key: what crossval + refit read from outside the pair), so a
rerun with unchanged inputs does not wait for the pool at all while both steps' outputs are intact.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Optional

from prefect import task

from tuneline.pipeline import fingerprint, handoff
from tuneline.config import Config
from tuneline.pipeline.stages import StageError
from tuneline.storage import read_json
from tuneline.tasks.caching import result_storage

FLOW_NAME = "tuneline-finetune"
STEPS = ("crossval", "refit")


class FinetuneDispatchError(StageError):
    """The work pool cannot take the fine-tuning, or its flow run did not complete."""


def deployment_name(work_pool: str) -> str:
    """One fine-tune deployment per pool, named after it (prefect.yaml: `tuneline-finetune/gpu`)."""
    return f"{FLOW_NAME}/{work_pool}"


def check_deployment(work_pool: str) -> None:
    """Before any work: the pool's deployment exists on a real Prefect server and targets that pool."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        raise FinetuneDispatchError(f"train.work_pool={work_pool!r} needs a Prefect server that the pool's worker also uses: "
                                    "set PREFECT_API_URL (and PREFECT_API_AUTH_STRING if the server requires it)")
    name = deployment_name(work_pool)
    try:
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(name)
    except ObjectNotFound:
        raise FinetuneDispatchError(f"train.work_pool={work_pool!r}: no deployment {name!r} on the Prefect server {api}; "
                                    f"create it with `prefect deploy --name {work_pool}` (prefect.yaml)") from None
    if deployment.work_pool_name != work_pool:
        raise FinetuneDispatchError(f"deployment {name!r} runs on work pool {deployment.work_pool_name!r}, "
                                    f"not train.work_pool={work_pool!r}")


def _steps_intact(config: Config, root: Path) -> bool:
    return all(fingerprint.outputs_current(n, config, root, fingerprint.stage_key(n, config, root)) for n in STEPS)


def finetune_cache_key(context, parameters: dict) -> Optional[str]:
    config, root = parameters["config"], Path(parameters["root"])
    if context.task.refresh_cache or _steps_intact(config, root):
        return "finetune-" + fingerprint.group_key(STEPS, config, root)
    return None


@task(name="finetune", retries=2, retry_delay_seconds=5, cache_key_fn=finetune_cache_key, persist_result=True)
def finetune_on_pool(config: Config, params: Optional[str], overrides: list[str], root: str) -> dict:
    """Run the fine-tune deployment of train.work_pool and return its {crossval, refit} results."""
    if config.train.handoff:
        job = handoff.publish(config, Path(root))
        _run_on_pool(config, handoff.job_parameters(job))
        return handoff.collect(config, Path(root), job)
    root_path = Path(root).resolve()
    result_path = root_path / ".cache" / "finetune" / f"result-{uuid.uuid4().hex}.json"
    parameters = {
        "params": None if params is None else str(Path(params).resolve()),
        "overrides": list(overrides),
        "root": str(root_path),
        "result_path": str(result_path),
    }
    try:
        _run_on_pool(config, parameters)
        return read_json(result_path)
    finally:
        result_path.unlink(missing_ok=True)


def _run_on_pool(config: Config, parameters: dict) -> None:
    """Run the pool's fine-tune deployment with `parameters` and wait; raise unless it completed."""
    from prefect.deployments import run_deployment

    flow_run = run_deployment(deployment_name(config.train.work_pool), parameters=parameters,
                              poll_interval=float(os.environ.get("TUNELINE_POLL_SECONDS", "2")))
    state = flow_run.state
    if state is None or not state.is_completed():
        raise FinetuneDispatchError(f"fine-tuning flow run {flow_run.name!r} on work pool {config.train.work_pool!r} "
                                    f"ended {getattr(state, 'name', 'without a state')}: {getattr(state, 'message', '')}")


def finetune_remote(config: Config, params: Optional[str], overrides: list[str], root: str) -> dict:
    """The pipeline's call: from the cache while crossval's and refit's outputs are intact, else on the pool."""
    options = {"refresh_cache": not _steps_intact(config, Path(root))}
    if (storage := result_storage(root)) is not None:
        options["result_storage"] = storage
    return finetune_on_pool.with_options(**options)(config, params, overrides, root)
