"""MLflow for LLM runs: one parent run (+ one nested run per fold), the generated answers as a table,
the adapter logged as a pyfunc model (adapter folder + base reference) and registered.

Uses tuneline.tracking's helpers, so it follows the same rules: nothing at import time, every
function takes its tracking URI, and the fluent API never leaves a global tracking URI behind.
"""
from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Optional

from tuneline import tracking as core

log = logging.getLogger(__name__)


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("torch", "transformers", "peft", "trl", "gguf", "safetensors", "pandas")]


def log_llm_run(uri: str, experiment: str, model_name: str, root: Path, run_name: str, params: dict, tags: dict[str, str],
                cv_summary: dict, fold_metrics: list[dict], test_metrics: dict[str, float], generations: list[dict],
                artifacts: list[Path], adapter_dir: Path, version_tags: dict[str, str], description: str) -> dict:
    import pandas as pd

    exp_id = core.ensure_experiment(uri, experiment, root)
    with core._mlflow(uri) as mlflow, mlflow.start_run(experiment_id=exp_id, run_name=run_name) as parent:
        mlflow.set_tags({**tags, **core.environment_tags(), "tuneline.run_kind": "pipeline"})
        mlflow.log_params(core.flatten(params))
        summary = {}
        for name, stats in cv_summary["metrics"].items():
            summary[f"cv_{name}_mean"], summary[f"cv_{name}_std"] = stats["mean"], stats["std"]
        mlflow.log_metrics({**summary, **test_metrics})
        for path in artifacts:
            if Path(path).is_file():
                mlflow.log_artifact(str(path))
        if generations:
            mlflow.log_table(pd.DataFrame(generations), artifact_file="generated_answers.json")
        for i, fm in enumerate(fold_metrics):
            with mlflow.start_run(experiment_id=exp_id, run_name=f"{run_name}-fold{i}", nested=True):
                mlflow.set_tags({"tuneline.run_kind": "fold", "fold": str(i), **{k: v for k, v in tags.items() if k.startswith("git.")}})
                mlflow.log_metrics(dict(fm))
        signature = _signature(version_tags.get("method"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                artifacts={"adapter_dir": str(adapter_dir)}, signature=signature,
                pip_requirements=_requirements(), registered_model_name=model_name,
            )
        version = str(info.registered_model_version)
        c = core.client(uri)
        c.update_model_version(model_name, version, description=description)
        lineage = {k: v for k, v in tags.items() if k.startswith(("git.", "dvc."))}
        for k, v in {**version_tags, **lineage}.items():
            c.set_model_version_tag(model_name, version, k, str(v))
    return {"run_id": parent.info.run_id, "experiment_id": exp_id, "registered_model_name": model_name, "version": version,
            "model_uri": f"models:/{model_name}/{version}", "tracking_uri": uri}


def _signature(method: Optional[str]):
    """Input `prompt` (or `text`, what `tuneline predict` sends) -> `response`; reward models also take `response`."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = [ColSpec("string", "prompt", required=False), ColSpec("string", "text", required=False)]
    if method == "reward_model":
        return ModelSignature(Schema(inputs + [ColSpec("string", "response")]), Schema([ColSpec("double", "reward")]))
    return ModelSignature(Schema(inputs), Schema([ColSpec("string", "response")]),
                          params=ParamSchema([ParamSpec("max_new_tokens", "long", 64)]))


def champion(uri: str, name: str) -> Optional[dict]:
    """The current champion version of `name` with its tags, or None."""
    from mlflow.exceptions import MlflowException

    try:
        mv = core.client(uri).get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None
    return {"version": str(mv.version), "run_id": mv.run_id, "tags": dict(mv.tags)}


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


def set_champion(uri: str, name: str, version: str, previous: Optional[str]) -> None:
    """Move the `champion` alias (the old one becomes `previous`)."""
    c = core.client(uri)
    if previous is not None:
        c.set_registered_model_alias(name, "previous", previous)
    c.set_registered_model_alias(name, "champion", version)


def log_decision(uri: str, run_id: str, decision: dict) -> None:
    c = core.client(uri)
    c.log_dict(run_id, decision, "promotion.json")
    c.set_tag(run_id, "promotion.promoted", str(decision["promote"]).lower())
