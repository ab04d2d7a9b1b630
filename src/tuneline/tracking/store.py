"""The local (SQLite) tracking store itself: its first creation (MLflow creates a schema without a
lock, so two first runs would race: "duplicate column name"), and where its artifacts live (beside
the store, so projects sharing one store never depend on each other's folders).
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)

ARTIFACTS_DIR = "mlartifacts"
_prepared: set[str] = set()
_in_process = threading.Lock()


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a `sqlite:///…` URI (relative paths from the working directory), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0]).resolve()


def _schema_is_current(db: Path) -> bool:
    """The file exists and its schema is at MLflow's head revision: nothing left to create."""
    import sqlite3

    if not db.is_file() or db.stat().st_size == 0:
        return False
    from mlflow.store.db.utils import _get_latest_schema_revision

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:  # no alembic_version table yet: a creation is under way or never started
        return False
    return row is not None and row[0] == _get_latest_schema_revision()


def _init_lock(db: Path) -> Path:
    """The lock that serialises a store's creation: in the temp dir, keyed by the store's path, so
    that a command that finds the store busy or read-only leaves no file in the project."""
    import hashlib
    import tempfile

    return Path(tempfile.gettempdir()) / f"tuneline-mlflow-init-{hashlib.sha256(str(db).encode()).hexdigest()[:16]}.lock"


def prepare(uri: str) -> None:
    """Create a SQLite store's schema once, under a lock (_init_lock) that processes starting together
    wait on; a current schema is left as it is, and other stores create theirs server-side."""
    db = sqlite_path(uri)
    if db is None or uri in _prepared:
        return
    with _in_process:
        if uri in _prepared:
            return
        if not _schema_is_current(db) and db.parent.is_dir():
            from filelock import FileLock
            from mlflow import MlflowClient

            with FileLock(str(_init_lock(db)), timeout=300):
                # the first calls that build (and cache, per process) the tracking and registry stores
                c = MlflowClient(tracking_uri=uri)
                c.search_experiments(max_results=1)
                c.search_registered_models(max_results=1)
        _prepared.add(uri)


def artifact_root(uri: str) -> Optional[str]:
    """Where a new experiment of a SQLite store keeps its artifacts: beside the database file.
    None for other stores (a server decides, e.g. its --artifacts-destination)."""
    db = sqlite_path(uri)
    return None if db is None else (db.parent / ARTIFACTS_DIR).as_uri()


def local_path(location: str) -> Optional[Path]:
    """The folder a local artifact location (a file: URI or a path) names; None for a remote one."""
    parts = urlsplit(location)
    if parts.scheme == "file":
        return Path(unquote(parts.path)).resolve()
    return Path(location).resolve() if parts.scheme == "" else None


def warn_if_outside(uri: str, experiment: str, location: str, root: Path) -> Optional[str]:
    """A warning (logged, and returned) when an existing experiment of a SQLite store keeps its
    artifacts outside the store's folder: deleting the project that holds them breaks its versions."""
    db, folder = sqlite_path(uri), local_path(location)
    if db is None or folder is None or folder.is_relative_to(db.parent):
        return None
    project = Path(root).resolve()
    where = "inside this project" if folder.is_relative_to(project) else "outside this project (in another project?)"
    message = (f"experiment {experiment!r} of {uri} keeps its artifacts in {folder}, {where}, not beside the store in "
               f"{db.parent}: deleting that folder breaks the model versions of every project that shares this store. "
               f"To move them: set tracking.experiment to a new name (new experiments keep artifacts in "
               f"{db.parent / ARTIFACTS_DIR}), or copy {folder} to {db.parent / ARTIFACTS_DIR} and replace the prefix "
               f"'{folder.as_uri()}' with '{(db.parent / ARTIFACTS_DIR).as_uri()}' in the store's "
               "experiments.artifact_location, runs.artifact_uri, logged_models.artifact_location and "
               "model_versions.storage_location columns")
    log.warning("%s", message)
    return message
