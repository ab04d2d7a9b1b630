"""MLflow for LLM runs: what differs from the classifier's run, on top of tuneline.tracking.runs (the one
owner of runs and the registry): one nested run per fold, the generated answers as a table, and the
adapter logged as a pyfunc model (adapter folder + base reference).
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Optional

from tuneline.tracking import runs as core

log = logging.getLogger(__name__)


def log_llm_run(uri: str, experiment: str, model_name: str, root: Path, run_name: str, params: dict, tags: dict[str, str],
                cv_summary: dict, fold_metrics: list[dict], test_metrics: dict[str, float], generations: list[dict],
                artifacts: list[Path], adapter_dir: Path, version_tags: dict[str, str], description: str,
                registration_key: Optional[str] = None) -> dict:
    def children(mlflow, exp_id: str, lineage: dict[str, str]) -> None:
        import pandas as pd

        if generations:
            mlflow.log_table(pd.DataFrame(generations), artifact_file="generated_answers.json")
        core._fold_runs(mlflow, exp_id, run_name, fold_metrics, lineage)

    return core.log_registered_model(
        uri, experiment, model_name, root, run_name, params, tags, cv_summary, test_metrics, artifacts,
        Path(__file__).with_name("pyfunc_model.py"), {"adapter_dir": str(adapter_dir)}, _signature(version_tags.get("method")),
        core.pinned("torch", "transformers", "peft", "trl", "gguf", "safetensors", "pandas"), description, version_tags,
        registration_key, children,
    )


def _signature(method: Optional[str]):
    """Input `prompt` (or `text`, what `tuneline predict` sends) -> `response`; reward models also take `response`."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = [ColSpec("string", "prompt", required=False), ColSpec("string", "text", required=False)]
    if method == "reward_model":
        return ModelSignature(Schema(inputs + [ColSpec("string", "response")]), Schema([ColSpec("double", "reward")]))
    return ModelSignature(Schema(inputs), Schema([ColSpec("string", "response")]),
                          params=ParamSchema([ParamSpec("max_new_tokens", "long", 64)]))


def download_adapter(uri: str, name: str, version: str, dst: Optional[Path] = None) -> Path:
    """A registered version's adapter folder, downloaded from the registry."""
    from tuneline.llm.training import ADAPTER_META

    dst = Path(dst or tempfile.mkdtemp(prefix="tuneline-champion-"))
    with core._mlflow(uri) as mlflow:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(dst)))
    found = sorted(local.rglob(ADAPTER_META))
    if not found:
        raise FileNotFoundError(f"models:/{name}/{version} has no LLM adapter ({ADAPTER_META}) in its artifacts")
    return found[0].parent
