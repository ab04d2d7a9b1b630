"""The one module that owns MLflow: tracking URI, experiment, run logging, registration, aliases.

Nothing happens at import time; every function takes the tracking URI it works against.
"""
from __future__ import annotations

import contextlib
import logging
import os
import platform
import warnings
from pathlib import Path
from typing import Any, Optional

import yaml

log = logging.getLogger(__name__)


def tracking_uri(root: Path) -> str:
    """MLFLOW_TRACKING_URI when set (a team server), else a SQLite file in the project."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(root) / 'mlflow.db').resolve()}"


@contextlib.contextmanager
def _mlflow(uri: str):
    """The fluent MLflow API pointed at `uri` for the duration only.

    `mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI to the environment, which would
    leak this run's store into later runs and subprocesses; both are restored on exit.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    saved_uri = mlflow.get_tracking_uri() if saved_env else None
    mlflow.set_tracking_uri(uri)
    try:
        yield mlflow
    finally:
        if saved_env is None:
            mlflow.set_tracking_uri(None)
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            mlflow.set_tracking_uri(saved_uri)


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ensure_experiment(uri: str, name: str, root: Path) -> str:
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = (Path(root) / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
    return c.create_experiment(name, artifact_location=location)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v if not isinstance(v, (list, tuple)) else yaml.safe_dump(v, default_flow_style=True).strip()
    return out


def environment_tags() -> dict[str, str]:
    import torch
    import transformers

    return {
        "env.python": platform.python_version(),
        "env.torch": torch.__version__,
        "env.transformers": transformers.__version__,
        "env.device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def log_pipeline_run(
    uri: str,
    experiment: str,
    registered_model_name: str,
    root: Path,
    run_name: str,
    params: dict,
    tags: dict[str, str],
    cv_summary: dict,
    fold_metrics: list[dict],
    test_metrics: dict[str, float],
    artifacts: list[Path],
    model_dir: Path,
) -> dict:
    """One parent run with one nested run per fold; log the model folder as pyfunc and register it."""
    import pandas as pd
    from mlflow.models import infer_signature

    exp_id = ensure_experiment(uri, experiment, root)
    with _mlflow(uri) as mlflow, mlflow.start_run(experiment_id=exp_id, run_name=run_name) as parent:
        mlflow.set_tags({**tags, **environment_tags(), "tuneline.run_kind": "pipeline"})
        mlflow.log_params(flatten(params))
        summary_metrics = {}
        for name, stats in cv_summary["metrics"].items():
            summary_metrics[f"cv_{name}_mean"] = stats["mean"]
            summary_metrics[f"cv_{name}_std"] = stats["std"]
        mlflow.log_metrics({**summary_metrics, **test_metrics})
        for path in artifacts:
            if Path(path).is_file():
                mlflow.log_artifact(str(path))
        for i, fm in enumerate(fold_metrics):
            with mlflow.start_run(experiment_id=exp_id, run_name=f"{run_name}-fold{i}", nested=True):
                mlflow.set_tags({"tuneline.run_kind": "fold", "fold": str(i), **{k: v for k, v in tags.items() if k.startswith("git.")}})
                mlflow.log_metrics({k: v for k, v in fm.items()})
        signature = infer_signature(pd.DataFrame({"text": ["an example"]}), pd.DataFrame({"label": ["x"]}))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                artifacts={"model_dir": str(model_dir)},
                signature=signature,
                pip_requirements=_requirements(),
                registered_model_name=registered_model_name,
            )
        version = str(info.registered_model_version)
        c = client(uri)
        c.update_model_version(
            registered_model_name,
            version,
            description=f"{params['select']['candidates'][0]['model']} — cv f1_macro "
            f"{cv_summary['metrics']['f1_macro']['mean']:.4f} ± {cv_summary['metrics']['f1_macro']['std']:.4f}",
        )
        for k, v in {**{f"cv.{n}.mean": f"{s['mean']:.6f}" for n, s in cv_summary["metrics"].items()},
                     "candidate": cv_summary["model"], "strategy": cv_summary["strategy"],
                     **{k: v for k, v in tags.items() if k.startswith(("git.", "dvc."))}}.items():
            c.set_model_version_tag(registered_model_name, version, k, str(v))
    return {
        "run_id": parent.info.run_id,
        "experiment_id": exp_id,
        "registered_model_name": registered_model_name,
        "version": version,
        "model_uri": f"models:/{registered_model_name}/{version}",
        "cv_metrics": {n: s["mean"] for n, s in cv_summary["metrics"].items()},
        "tracking_uri": uri,
    }


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("torch", "transformers", "safetensors", "scikit-learn", "pandas")]


def champion(uri: str, name: str, metric: str) -> Optional[tuple[str, float]]:
    """The current champion's version and its CV mean of `metric`, or None."""
    from mlflow.exceptions import MlflowException

    c = client(uri)
    try:
        mv = c.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None
    value = c.get_run(mv.run_id).data.metrics.get(f"cv_{metric}_mean")
    return mv.version, value


def set_champion(uri: str, name: str, version: str, previous: Optional[str]) -> None:
    c = client(uri)
    if previous is not None:
        c.set_registered_model_alias(name, "previous", previous)
    c.set_registered_model_alias(name, "champion", version)


def log_decision(uri: str, run_id: str, decision: dict) -> None:
    c = client(uri)
    c.log_dict(run_id, decision, "promotion.json")
    c.set_tag(run_id, "promotion.promoted", str(decision["promote"]).lower())
