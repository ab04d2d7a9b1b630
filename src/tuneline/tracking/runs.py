"""The one module that owns MLflow: tracking URI, experiment, run logging, registration, aliases.

Nothing happens at import time; every function takes the tracking URI it works against.
"""
from __future__ import annotations

import contextlib
import logging
import os
import platform
import re
import warnings
from pathlib import Path
from typing import Any, Optional

import yaml

from tuneline.tracking import store

log = logging.getLogger(__name__)


def tracking_uri(root: Path) -> str:
    """MLFLOW_TRACKING_URI when set (a team server), else a SQLite file in the project."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(root) / 'mlflow.db').resolve()}"


@contextlib.contextmanager
def scoped(uri: str):
    """The fluent MLflow API pointed at `uri` for the duration only: `mlflow.set_tracking_uri` also
    exports MLFLOW_TRACKING_URI, which would leak this store into later runs; both are restored."""
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    _open(uri)
    import mlflow

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # models:/ URIs resolve against the same store, never a global left by others
    try:
        yield mlflow
    finally:
        # no global URI survives the block: later code resolves from the environment, as before it
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _open(uri: str) -> None:
    """Before MLflow touches `uri`: a SQLite store's schema exists, and no URL with the URI's
    user:password@ part is printed (MLflow prints each ended run's URL)."""
    if redact(uri) != uri:
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    store.prepare(uri)


def client(uri: str):
    from mlflow import MlflowClient

    _open(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)  # the registry too: never a global URI left by others


def fault(point: str) -> None:
    """A test switch: with TUNELINE_FAULT=<point> this process kills itself (SIGKILL) right here, as
    `kill -9` or the OOM killer would, so tests can stop a registry operation at an exact point."""
    if point in os.environ.get("TUNELINE_FAULT", "").split(","):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


# A saved view of the experiment's runs table with the columns people compare; open it with
# #/experiments/<id>/runs?viewStateShareKey=tuneline (MLflow's own "share view" mechanism).
UI_VIEW_KEY = "tuneline"
UI_COLUMNS = ["attributes.`Run Name`", "attributes.`Created`", "tags.`candidate`", "tags.`winner`",
              "metrics.`cv_f1_macro_mean`", "metrics.`cv_f1_macro_std`", "metrics.`cv_accuracy_mean`",
              "metrics.`test_accuracy`", "metrics.`test_f1_macro`", "metrics.`accuracy`", "metrics.`f1_macro`",
              "metrics.`loss`"]


def ensure_experiment(uri: str, name: str, root: Path) -> str:
    import json

    c = client(uri)
    if (exp := c.get_experiment_by_name(name)) is not None:
        store.warn_if_outside(uri, name, exp.artifact_location, root)
        return exp.experiment_id
    from mlflow.exceptions import MlflowException

    try:  # beside the store, not in this project: projects sharing a store stay independent
        exp_id = c.create_experiment(name, artifact_location=store.artifact_root(uri))
    except MlflowException:  # another first run created it a moment ago
        if (exp := c.get_experiment_by_name(name)) is None:
            raise
        return exp.experiment_id
    c.set_experiment_tag(exp_id, f"mlflow.sharedViewState.{UI_VIEW_KEY}",
                         json.dumps({"selectedColumns": UI_COLUMNS, "orderByKey": "attributes.start_time", "orderByAsc": False}))
    return exp_id


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested params as MLflow param names (`a.b.c`); lists and tuples as one flow-style YAML value."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = yaml.safe_dump(v, default_flow_style=True).strip() if isinstance(v, (list, tuple)) else v
    return out


def environment_tags() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    tags = {"env.python": platform.python_version(), "env.platform": platform.platform(),
            "env.device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "env.cuda": torch.version.cuda or "none"}
    for pkg in ("torch", "transformers", "peft", "scikit-learn", "mlflow", "prefect", "dvc", "great-expectations"):
        with contextlib.suppress(PackageNotFoundError):
            tags[f"env.{pkg}"] = version(pkg)
    return tags


def fold_runs(mlflow, exp_id: str, prefix: str, fold_metrics: list[dict], tags: dict[str, str]) -> None:
    for i, fm in enumerate(fold_metrics):
        with mlflow.start_run(experiment_id=exp_id, run_name=f"{prefix}-fold{i}", nested=True):
            mlflow.set_tags({"tuneline.run_kind": "fold", "fold": str(i), **tags})
            mlflow.log_metrics(dict(fm))


def trial_runs(mlflow, exp_id: str, prefix: str, trials: list[dict], tags: dict[str, str]) -> None:
    """One nested run per search trial (under the current, candidate, run), its fold runs under it."""
    for t in trials:
        with mlflow.start_run(experiment_id=exp_id, run_name=f"{prefix}-trial{t['number']}", nested=True):
            mlflow.set_tags({"tuneline.run_kind": "trial", "trial": str(t["number"]), "trial.state": t["state"],
                             "trial.configured": str(t["configured"]).lower(), **tags})
            mlflow.log_params({**t["params"], "trial_seed": t["seed"]})
            for step, value in t["intermediate"].items():
                mlflow.log_metric("cv_running_mean", value, step=int(step))
            if t["value"] is not None:
                mlflow.log_metric("cv_mean", t["value"])
            fold_runs(mlflow, exp_id, f"{prefix}-trial{t['number']}", [r["metrics"] for r in t["folds"]],
                      {**tags, "trial": str(t["number"])})


def cv_metrics(summary: dict[str, dict[str, float]]) -> dict[str, float]:
    """MLflow metric names of a `tuneline.metrics.summarize` result: cv_<metric>_{mean,std,ci95_low,ci95_high}."""
    return {f"cv_{name}_{stat}": s[stat] for name, s in summary.items() for stat in ("mean", "std", "ci95_low", "ci95_high")}


def pinned(*packages: str) -> list[str]:
    """pip requirements of a logged model: the installed version of each package."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in packages]


def log_registered_model(uri: str, experiment: str, registered_model_name: str, root: Path, reg, cv_summary: dict,
                         test_metrics: dict[str, float], registration_key: Optional[str] = None) -> dict:
    """The run and registry writes every task shares, for its `reg` (tuneline.plugins.Registration): a
    parent run (tags, params, CV and test metrics, artifacts), its fold runs and the task's own child
    runs, the pyfunc registered as a new version with its description and tags. `registration_key`
    tags the run first and the version last (find_registration). Nothing returned holds credentials."""
    from tuneline.tracking.owner import process_tags

    exp_id = ensure_experiment(uri, experiment, root)
    lineage = {k: v for k, v in reg.tags.items() if k.startswith(("git.", "dvc."))}
    key_tag = {REGISTRATION_KEY: registration_key} if registration_key else {}
    cv = cv_metrics(cv_summary["metrics"])
    # the key and the owning process from the run's first write: a kill at any later point leaves
    # a run that the next register (or `tuneline gc`) can tell from a live one
    with scoped(uri) as mlflow, mlflow.start_run(experiment_id=exp_id, run_name=reg.run_name,
                                                 tags={**key_tag, **process_tags()}) as parent:
        mlflow.set_tags({**reg.tags, **environment_tags(), "tuneline.run_kind": "pipeline"})
        mlflow.log_params(flatten(reg.params))
        mlflow.log_metrics({**cv, **test_metrics})
        for path in reg.artifacts:
            if Path(path).is_file():
                mlflow.log_artifact(str(path))
        if reg.log_children is not None:
            reg.log_children(mlflow, exp_id, lineage)
        fold_runs(mlflow, exp_id, reg.run_name, reg.fold_metrics, lineage)
        with warnings.catch_warnings(action="ignore"):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(reg.python_model), artifacts=reg.model_artifacts, signature=reg.signature,
                pip_requirements=reg.requirements, registered_model_name=registered_model_name,
            )
        version = str(info.registered_model_version)
        fault("after-log-model")
        client(uri).update_model_version(registered_model_name, version, description=reg.description)
        set_version_tags(uri, registered_model_name, version, {**reg.version_tags, **lineage, **key_tag})  # the key last: complete
    return _registration(uri, parent.info.run_id, exp_id, registered_model_name, version, cv)


def download_folder(uri: str, name: str, version: str, dst: Path, marker: str) -> Path:
    """The folder holding `marker` among a registered version's artifacts, downloaded into `dst`."""
    with scoped(uri) as mlflow:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(dst)))
    if not (found := sorted(local.rglob(marker))):
        raise FileNotFoundError(f"models:/{name}/{version} has no {marker} in its artifacts")
    return found[0].parent


_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


def registry_version(uri: str, model_uri: str, key: str = "model"):
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION` -> its ModelVersion; LookupError naming `key` and what is missing."""
    from mlflow.exceptions import MlflowException

    if (m := _MODEL_URI.match(model_uri)) is None:
        raise LookupError(f"{key} {model_uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    name, alias, version = m["name"], m["alias"], m["version"]
    try:
        return client(uri).get_model_version_by_alias(name, alias) if alias else client(uri).get_model_version(name, version)
    except MlflowException:
        versions = ", ".join(str(v.version) for v, _ in list_versions(uri, name)) or "none"
        raise LookupError(f"{key} {model_uri!r}: no such {'alias' if alias else 'version'} of {name!r} in {redact(uri)} "
                          f"(versions: {versions})") from None


def _registration(uri: str, run_id: str, exp_id: str, name: str, version: str, metrics: dict[str, float]) -> dict:
    """What the register step returns, for a new registration and for a reused one alike; its
    `cv_metrics` are the CV means among the run's `metrics`."""
    cv_means = {k[len("cv_"):-len("_mean")]: v for k, v in metrics.items() if k.startswith("cv_") and k.endswith("_mean")}
    return {"run_id": run_id, "experiment_id": exp_id, "registered_model_name": name, "version": version,
            "model_uri": f"models:/{name}/{version}", "cv_metrics": cv_means, "tracking_uri": redact(uri)}


def check_version(uri: str, name: str, version: str, task: Optional[str] = None) -> None:
    """A version that promotion may touch: it exists, it carries the registration's tags (the key is
    tagged last), its run finished, and (given `task`) it was registered by a project of that task."""
    versions = {str(v.version): v for v, _ in list_versions(uri, name)}
    if str(version) not in versions:
        raise LookupError(f"{name}: no version {version!r} in {redact(uri)}; versions: {', '.join(versions) or 'none'}")
    v = versions[str(version)]
    if missing := [t for t in (REGISTRATION_KEY, "task") if t not in v.tags]:
        raise LookupError(f"{name} version {version} is not a complete tuneline registration (no {', '.join(missing)} tag); "
                          "re-run the register stage")
    status = client(uri).get_run(v.run_id).info.status if v.run_id else "missing"
    if status != "FINISHED":
        raise LookupError(f"{name} version {version}: its run {v.run_id or '(none)'} is {status}, so its registration did not "
                          "finish; re-run the register stage, or `tuneline gc --apply`, to complete or remove it")
    if task is not None and v.tags["task"] != task:
        raise LookupError(f"{name} version {version} was registered for task {v.tags['task']!r}; this project's task is "
                          f"{task!r}: promote it from a project of that task")


def log_decision(uri: str, run_id: str, decision: dict) -> None:
    c = client(uri)
    c.log_dict(run_id, decision, "promotion.json")
    c.set_tag(run_id, "promotion.promoted", str(decision["promote"]).lower())
    for key in ("delta", "p_value"):
        if decision.get(key) is not None:
            c.log_metric(run_id, f"promotion_{key}", float(decision[key]))


# ---- registry: aliases, stages, listing, and a lock that serialises promotions -----------------

def alias_version(uri: str, name: str, alias: str) -> Optional[str]:
    from mlflow.exceptions import MlflowException

    try:
        return str(client(uri).get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def delete_alias(uri: str, name: str, alias: str) -> None:
    from mlflow.exceptions import MlflowException

    with contextlib.suppress(MlflowException):
        client(uri).delete_registered_model_alias(name, alias)


def mirror_stage(uri: str, name: str, version: str, stage: str) -> None:
    """Set a classic stage; stages are deprecated in MLflow, so their warning is kept from users and
    a later MLflow without them is tolerated (aliases remain the source of truth)."""
    try:
        with warnings.catch_warnings(action="ignore"):
            client(uri).transition_model_version_stage(name, version, stage, archive_existing_versions=False)
    except (AttributeError, NotImplementedError) as exc:
        log.info("model stages unavailable in this MLflow (%s); aliases only", exc)


def list_versions(uri: str, name: str) -> list[tuple[object, list[str]]]:
    """(version, its aliases) pairs, oldest first."""
    from mlflow.exceptions import MlflowException

    c = client(uri)
    try:
        versions = c.search_model_versions(f"name = '{name}'")
        aliases = c.get_registered_model(name).aliases  # search results do not carry aliases
    except MlflowException:
        return []
    return [(v, sorted(a for a, of in aliases.items() if str(of) == str(v.version)))
            for v in sorted(versions, key=lambda v: int(v.version))]


def set_version_tags(uri: str, name: str, version: str, tags: dict[str, str]) -> None:
    c = client(uri)
    for k, v in tags.items():
        c.set_model_version_tag(name, version, k, str(v))


def registry_lock(uri: str, name: str, timeout: float = 600.0):
    """A lock (use it in `with`) that serialises read-decide-write on one registered model across processes:
    a file beside a SQLite store, else in TUNELINE_LOCK_DIR (default: the temp dir; the same host only)."""
    import hashlib
    import tempfile

    from filelock import FileLock

    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):]).with_suffix(f".{name}.promote.lock")
    else:
        key = hashlib.sha256(f"{uri}|{name}".encode()).hexdigest()[:16]
        path = Path(os.environ.get("TUNELINE_LOCK_DIR", tempfile.gettempdir())) / f"tuneline-registry-{key}.lock"
    return FileLock(str(path), timeout=timeout)


# ---- team servers: fail fast before training, and register once per set of inputs ---------------

REGISTRATION_KEY = "tuneline.registration_key"


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be used; the message names the URI (without credentials)."""


def redact(text: str) -> str:
    """`text` (a URI, or an error message that holds URIs) without any user:password@ part, for
    messages and logged values."""
    return re.sub(r"(?<=//)[^/?#\s]*@", "", text)


def ui_hint(uri: str, view: str = "") -> str:
    """Where to browse the runs, for a run summary: the command that serves a SQLite store, else the
    server's address; without credentials, whatever `uri` holds."""
    uri = redact(uri)
    if uri.startswith("sqlite"):
        return f"mlflow ui --backend-store-uri {uri}" + (f"  then open http://127.0.0.1:5000/{view}" if view else "")
    return f"{uri}/{view}" if view else uri


def _tls_context():
    """TLS as MLflow's own client sets it up from the environment: MLFLOW_TRACKING_INSECURE_TLS,
    MLFLOW_TRACKING_SERVER_CERT_PATH (a CA bundle) and MLFLOW_TRACKING_CLIENT_CERT_PATH (a PEM)."""
    import ssl

    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("1", "true"):
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)
    if os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH"):
        context.load_cert_chain(os.environ["MLFLOW_TRACKING_CLIENT_CERT_PATH"])
    return context


def _http_check(uri: str, timeout: float) -> None:
    import base64
    import ssl
    import time
    import urllib.request
    from urllib.parse import unquote, urlsplit

    # urllib would not send the URI's own user:password@ (MLflow's client does); the environment's win
    parts = urlsplit(uri)
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or unquote(parts.username or "")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD") or unquote(parts.password or "")
    request = urllib.request.Request(redact(uri).rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1")
    if user and password:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        request.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
    context = _tls_context() if parts.scheme == "https" else None
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(request, timeout=5, context=context):
                return
        except OSError as exc:  # an HTTPError carries the status; a URLError or a timeout has none
            code = getattr(exc, "code", None)
            if code in (401, 403):
                who = f"user {user!r}" if user else "a client without credentials"
                raise TrackingUnavailable(
                    f"MLflow tracking server {redact(uri)} refused {who} (HTTP {code}); set MLFLOW_TRACKING_USERNAME "
                    "and MLFLOW_TRACKING_PASSWORD in the environment to an account with access") from None
            reason = f"HTTP {code}" if code else str(getattr(exc, "reason", exc))
            if isinstance(getattr(exc, "reason", exc), ssl.SSLCertVerificationError):  # no blip: waiting will not help
                raise TrackingUnavailable(
                    f"MLflow tracking server {redact(uri)}: its TLS certificate is not trusted ({reason}); set "
                    "MLFLOW_TRACKING_SERVER_CERT_PATH to the CA bundle that signed it (or MLFLOW_TRACKING_INSECURE_TLS=true "
                    "to skip the check). Nothing was trained.") from None
        if time.monotonic() >= deadline:
            raise TrackingUnavailable(
                f"MLflow tracking server {redact(uri)} is unreachable ({reason}); start it or point MLFLOW_TRACKING_URI "
                "at a running server. Nothing was trained.") from None
        time.sleep(1.0)


def check_tracking(uri: str, timeout: float = 10.0) -> None:
    """Pre-flight, before any training: the tracking store answers and accepts our credentials. A short
    wait (`timeout`) rides out a blip; a server that stays down is a clear error, not a failed register."""
    from urllib.parse import urlsplit

    scheme = urlsplit(uri).scheme
    if scheme in ("http", "https"):
        _http_check(uri, timeout)
    elif scheme == "sqlite":
        folder = Path(uri[len("sqlite:///"):]).parent
        if not folder.is_dir():
            raise TrackingUnavailable(f"tracking store {uri}: folder {folder} does not exist")
    elif scheme not in ("", "file"):
        try:
            client(uri).search_experiments(max_results=1)
        except Exception as exc:  # any store: a database URI, databricks, ...
            raise TrackingUnavailable(f"tracking store {redact(uri)} cannot be used: {type(exc).__name__}: "
                                      f"{redact(str(exc))[:300]}") from None
    log.info("tracking store %s is reachable", redact(uri))


def find_registration(uri: str, experiment: str, name: str, key: str) -> Optional[dict]:
    """The registration already made for these inputs (`key`: a FINISHED run whose version carries it,
    tagged last), which a retried or repeated register reuses; None when there is none. Call
    cleanup.retire_leftovers first, so that the registry never shows a half-registered model."""
    from mlflow.entities import ViewType

    c = client(uri)
    if (exp := c.get_experiment_by_name(experiment)) is None:
        return None
    runs = c.search_runs([exp.experiment_id], filter_string=f"tags.`{REGISTRATION_KEY}` = '{key}' and attributes.status = 'FINISHED'",
                         run_view_type=ViewType.ACTIVE_ONLY, order_by=["attributes.start_time ASC"])
    for run in runs:  # a later one is a duplicate from a race: left alone, the first is reused
        versions = c.search_model_versions(f"run_id = '{run.info.run_id}'")
        if (version := next((v for v in versions if v.name == name and v.tags.get(REGISTRATION_KEY) == key), None)) is not None:
            log.info("inputs unchanged since %s version %s (run %s): reusing that registration", name, version.version,
                     run.info.run_id)
            return _registration(uri, run.info.run_id, exp.experiment_id, name, str(version.version),
                                 run.data.metrics) | {"reused": True}
    return None
