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


def _fold_runs(mlflow, exp_id: str, prefix: str, fold_metrics: list[dict], tags: dict[str, str]) -> None:
    for i, fm in enumerate(fold_metrics):
        with mlflow.start_run(experiment_id=exp_id, run_name=f"{prefix}-fold{i}", nested=True):
            mlflow.set_tags({"tuneline.run_kind": "fold", "fold": str(i), **tags})
            mlflow.log_metrics(dict(fm))


def log_pipeline_run(
    uri: str,
    experiment: str,
    registered_model_name: str,
    root: Path,
    run_name: str,
    params: dict,
    tags: dict[str, str],
    cv_summary: dict,
    comparison: dict,
    fold_metrics: dict[str, list[dict]],
    test_metrics: dict[str, float],
    artifacts: list[Path],
    model_dir: Path,
) -> dict:
    """A parent run; under it one child run per candidate, each with one nested run per fold.
    The refit model is logged as pyfunc on the parent and registered as a new version."""
    import pandas as pd
    from mlflow.models import infer_signature

    exp_id = ensure_experiment(uri, experiment, root)
    lineage = {k: v for k, v in tags.items() if k.startswith(("git.", "dvc."))}
    with _mlflow(uri) as mlflow, mlflow.start_run(experiment_id=exp_id, run_name=run_name) as parent:
        mlflow.set_tags({**tags, **environment_tags(), "tuneline.run_kind": "pipeline",
                         "winner": cv_summary["winner"]["name"]})
        mlflow.log_params(flatten(params))
        summary_metrics = {}
        for name, stats in cv_summary["metrics"].items():
            summary_metrics[f"cv_{name}_mean"] = stats["mean"]
            summary_metrics[f"cv_{name}_std"] = stats["std"]
            summary_metrics[f"cv_{name}_ci95_low"] = stats["ci95_low"]
            summary_metrics[f"cv_{name}_ci95_high"] = stats["ci95_high"]
        mlflow.log_metrics({**summary_metrics, **test_metrics})
        for path in artifacts:
            if Path(path).is_file():
                mlflow.log_artifact(str(path))
        table = pd.DataFrame([
            {"candidate": r["name"], "model": r["model"], "strategy": r["strategy"], "parameters": r["parameters"],
             "latency_ms": r["latency_ms"], "winner": r["name"] == comparison["winner"],
             **{f"{m}_mean": s["mean"] for m, s in r["metrics"].items()}, **{f"{m}_std": s["std"] for m, s in r["metrics"].items()}}
            for r in comparison["rows"]
        ])
        mlflow.log_table(table, artifact_file="comparison_table.json")
        for row in comparison["rows"]:
            with mlflow.start_run(experiment_id=exp_id, run_name=f"{run_name}-{row['name']}", nested=True):
                mlflow.set_tags({"tuneline.run_kind": "candidate", "candidate": row["name"], **lineage})
                mlflow.log_params({"model": row["model"], "strategy": row["strategy"], "parameters": row["parameters"]})
                mlflow.log_metrics({f"cv_{m}_mean": s["mean"] for m, s in row["metrics"].items()}
                                   | {f"cv_{m}_std": s["std"] for m, s in row["metrics"].items()} | {"latency_ms": row["latency_ms"]})
                _fold_runs(mlflow, exp_id, f"{run_name}-{row['name']}", fold_metrics[row["name"]],
                           {"candidate": row["name"], **lineage})
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
        f1 = cv_summary["metrics"]["f1_macro"]
        c = client(uri)
        c.update_model_version(
            registered_model_name, version,
            description=f"{cv_summary['winner']['name']} — CV macro-F1 {f1['mean']:.4f} ± {f1['std']:.4f} (k={cv_summary['k']}); "
            f"test accuracy {test_metrics.get('test_accuracy', float('nan')):.4f}",
        )
        version_tags = {f"cv.{n}.mean": f"{s['mean']:.6f}" for n, s in cv_summary["metrics"].items()}
        version_tags |= {f"cv.{n}.std": f"{s['std']:.6f}" for n, s in cv_summary["metrics"].items()}
        version_tags |= {k.replace("_", ".", 1): f"{v:.6f}" for k, v in test_metrics.items()}
        version_tags |= {"candidate": cv_summary["winner"]["name"], "strategy": cv_summary["strategy"], **lineage}
        for k, v in version_tags.items():
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
