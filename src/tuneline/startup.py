"""What makes `tuneline run` start and end quickly; none of it changes what a run computes.

- Prefect's temporary server boots in a thread while the main thread loads the step libraries.
- A new project copies an empty, already migrated Prefect database instead of migrating one.
- The console script skips the interpreter's teardown once the work is written.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def start_temporary_prefect_server():
    """Start Prefect's temporary server now, in a thread, and return the thread (None with a server URL).

    Without PREFECT_API_URL, a flow's first API call starts a temporary server and waits for it:
    a subprocess that imports the server and creates/migrates its SQLite database, 4-12 s during
    which this process only polls. Started here instead, the main thread loads what the steps need
    meanwhile (`warm_up`); the flow then finds the same server running (Prefect keeps one
    temporary server per process). Should the start fail, the flow's own start raises the error.
    A project's first run copies an empty, already migrated database (see `prefect_db_template`).
    """
    import threading

    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return None
    from prefect.server.api.server import SubprocessASGIServer

    url = settings.server.database.connection_url
    default_db = Path(settings.home) / "prefect.db"
    db = default_db if url is not None and url.get_secret_value() == f"sqlite+aiosqlite:///{default_db}" else None
    template = prefect_db_template()
    fresh = db is not None and not db.exists()
    if fresh and template.exists():
        _sqlite_copy(template, db)
        fresh = False
    server = SubprocessASGIServer()
    thread = threading.Thread(target=_quiet_start, args=(server, db if fresh else None, template),
                              name="prefect-temporary-server", daemon=True)
    thread.start()
    return thread


def prefect_db_template() -> Path:
    """An empty Prefect database at this Prefect version's schema, kept once per machine: migrating
    a new SQLite database takes ~6 s of a first run; copying a migrated one takes milliseconds."""
    from importlib.metadata import version

    from tuneline.storage import user_cache_dir

    return user_cache_dir("prefect", f"empty-{version('prefect')}.db")


def _sqlite_copy(src: Path, dst: Path) -> None:
    """A consistent copy of a live SQLite database (the backup API), written atomically."""
    import sqlite3

    from tuneline.storage import atomic_path

    with atomic_path(dst) as tmp:
        source, target = sqlite3.connect(src), sqlite3.connect(tmp)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()


def _quiet_start(server, new_db: Path | None, template: Path) -> None:
    try:
        server.start()
    except Exception as exc:  # the flow's own start of the server reports it
        log.debug("temporary Prefect server did not start early: %s", exc)
        return
    if new_db is not None and new_db.exists() and not template.exists():
        try:  # migrated, and no flow run yet: keep it as the template for the next new project
            _sqlite_copy(new_db, template)
        except Exception as exc:  # only a missed speed-up
            log.debug("could not keep a Prefect database template: %s", exc)


def warm_up(root: Path, server) -> None:
    """While Prefect's server boots: the MLflow store's tables and the imports the steps need, in
    the order they are needed, stopping as soon as the server is up (what is left loads when, and
    only if, a step needs it: a fully cached rerun needs none of the training libraries)."""
    from tuneline.tracking import runs as tracking

    def mlflow_store():
        uri = tracking.tracking_uri(root)
        if uri.startswith("sqlite:///") and Path(uri[len("sqlite:///"):]).parent.is_dir():
            tracking.client(uri).search_experiments(max_results=1)  # creates the tables on a first run

    def validation():
        import great_expectations  # noqa: F401

    def training():
        import sklearn.feature_extraction.text  # noqa: F401  (the TF-IDF baseline)
        import sklearn.linear_model  # noqa: F401
        import torch  # noqa: F401

    def encoders():
        from transformers import AutoModel, AutoTokenizer  # noqa: F401  (a lazy module: resolve the classes now)

    for step in (mlflow_store, validation, training, encoders):
        if not server.is_alive():
            return
        step()


def exit_quickly(code: int) -> None:
    """End the process with `code` after the exit handlers, without the interpreter's teardown.

    Once torch, transformers, Prefect and MLflow are loaded, freeing every module takes ~3 s after
    the work is done and written. The exit handlers still run (logging is flushed, Prefect's
    temporary server is stopped). With a Prefect API server (PREFECT_API_URL) the normal shutdown
    stays, so its event and log workers drain first.
    """
    if os.environ.get("PREFECT_API_URL") or ("prefect" in sys.modules and _prefect_api_configured()):
        sys.exit(code)
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _prefect_api_configured() -> bool:
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)
