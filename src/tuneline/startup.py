"""What makes `tuneline run` start and end quickly (none of it changes what a run computes): Prefect's
temporary server boots in a thread while the steps' libraries load, from a copied, already migrated
database, and the console script skips the interpreter's teardown. The server runs in its own session
(a Ctrl-C reaches only tuneline, which then records the flow run as Crashed) and exits when its parent
dies, even by SIGKILL.
"""
from __future__ import annotations

import logging
import os
import pydoc
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def start_temporary_prefect_server():
    """Start Prefect's temporary server now, in a thread, and return the thread (None with a server URL).
    The flow's first API call would start it and wait 4-12 s; started here, the main thread loads the
    steps' libraries meanwhile (`warm_up`) and the flow finds it running (Prefect keeps one temporary
    server per process). A start that fails is the flow's own start to report."""
    import threading

    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return None
    url = settings.server.database.connection_url
    default_db = Path(settings.home) / "prefect.db"
    db = default_db if url is not None and url.get_secret_value() == f"sqlite+aiosqlite:///{default_db}" else None
    template = prefect_db_template()
    if (fresh := db is not None and not db.exists()) and template.exists():
        _sqlite_copy(template, db)
        fresh = False
    thread = threading.Thread(target=_quiet_start, args=(_watched_server_class()(), db if fresh else None, template),
                              name="prefect-temporary-server", daemon=True)
    thread.start()
    return thread


def _watched_server_class():
    """Prefect's SubprocessASGIServer (one per process: the flow's API calls find this one), started in
    its own session and watching this process (PR_SET_PDEATHSIG would fire when the starting thread ends)."""
    import subprocess

    import prefect
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    class WatchedServer(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen:
            # Prefect 3.x's own command, with our app factory (which starts the watcher) and a session
            server_env = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
                          "TUNELINE_SERVER_PARENT": str(os.getpid())}
            return subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
                 "tuneline.startup:prefect_app_watching_parent", "--host", "127.0.0.1", "--port", str(self.port),
                 "--log-level", "error", "--lifespan", "on"],
                env={**os.environ, **server_env, **get_current_settings().to_environment_variables(exclude_unset=True)},
                start_new_session=True)

    return WatchedServer


def prefect_app_watching_parent():
    """The temporary server's app (in the server process): Prefect's, plus a thread that stops the
    server once its parent is gone (its parent PID changes when the parent dies)."""
    import signal
    import threading
    import time

    from prefect.server.api.server import create_app

    parent = int(os.environ["TUNELINE_SERVER_PARENT"])

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down cleanly
        time.sleep(10)
        os._exit(1)  # it did not

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    return create_app()


def crash_orphaned_flow_runs(root: Path) -> None:
    """Mark this project's flow runs that are still Running or Pending as Crashed: their process died
    (SIGKILL, OOM) without a word to the server. Called under the project lock, so no live run of
    this project exists; only with the project's own Prefect database, which no other project shares."""
    from prefect.settings import get_current_settings

    if Path(get_current_settings().home).resolve() != (Path(root) / ".prefect").resolve():
        return
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    live = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING]))
    try:
        with get_client(sync_client=True) as client:
            for run in client.read_flow_runs(flow_run_filter=FlowRunFilter(state=live)):
                client.set_flow_run_state(run.id, Crashed(message="its tuneline process died; found by the next run"), force=True)
                log.info("flow run %s was left %s by a process that died: marked Crashed", run.name, run.state_type.value)
    except Exception as exc:  # bookkeeping only: the run itself reports a server that does not answer
        log.debug("could not mark orphaned flow runs: %s", exc)


def prefect_db_template() -> Path:
    """An empty Prefect database at this Prefect version's schema, kept once per machine: migrating
    a new SQLite database takes ~6 s of a first run; copying a migrated one takes milliseconds."""
    from importlib.metadata import version

    from tuneline.storage import user_cache_dir

    return user_cache_dir("prefect", f"empty-{version('prefect')}.db")


def _sqlite_copy(src: Path, dst: Path) -> None:
    """A consistent copy of a live SQLite database (the backup API), written atomically."""
    import sqlite3
    from contextlib import closing

    from tuneline.storage import atomic_path

    with atomic_path(dst) as tmp, closing(sqlite3.connect(src)) as source, closing(sqlite3.connect(tmp)) as target:
        source.backup(target)


def _quiet_start(server, new_db: Path | None, template: Path) -> None:
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    try:
        # Prefect's 20 s default is too short for a loaded machine; a start that timed out here would
        # leave its server booting on the port the flow's own start then reuses (a second server,
        # "address already in use", and the first one orphaned).
        server.start(timeout=max(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value(), 120))
    except Exception as exc:  # the flow's own start of the server reports it
        log.debug("temporary Prefect server did not start early: %s", exc)
        if server.server_process is not None:  # the instance stays: the flow's start reuses it, watched
            server.server_process.kill()
            server.server_process.wait()
            server.server_process = None
        return
    if new_db is not None and new_db.exists() and not template.exists():
        try:  # migrated, and no flow run yet: keep it as the template for the next new project
            _sqlite_copy(new_db, template)
        except Exception as exc:  # only a missed speed-up
            log.debug("could not keep a Prefect database template: %s", exc)


def imports(*names: str):
    """A warm-up step: import these modules (or resolve a lazy module's classes, `transformers.AutoModel`)."""
    return lambda: [pydoc.locate(name) for name in names]


def warm_up(root: Path, server) -> None:
    """While Prefect's server boots: the MLflow store's tables and the imports the steps need, in
    the order they are needed, stopping as soon as the server is up (what is left loads when, and
    only if, a step needs it: a fully cached rerun needs none of the training libraries)."""
    from tuneline.tracking import runs as tracking

    def mlflow_store():
        uri = tracking.tracking_uri(root)
        if uri.startswith("sqlite:///") and Path(uri[len("sqlite:///"):]).parent.is_dir():
            tracking.client(uri).search_experiments(max_results=1)  # creates the tables on a first run

    for step in (mlflow_store, imports("great_expectations"),  # validation, then training (the TF-IDF baseline too)
                 imports("sklearn.feature_extraction.text", "sklearn.linear_model", "torch"),
                 imports("transformers.AutoModel", "transformers.AutoTokenizer")):
        if not server.is_alive():
            return
        step()


def exit_quickly(code: int) -> None:
    """End the process with `code` after the exit handlers (logging flushed, the temporary server stopped)
    but without the interpreter's teardown (~3 s once torch, transformers, Prefect and MLflow are loaded).
    With a Prefect API server the normal shutdown stays, so its event and log workers drain first."""
    if os.environ.get("PREFECT_API_URL") or ("prefect" in sys.modules and pydoc.locate("prefect.settings.get_current_settings")().api.url):
        sys.exit(code)
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
