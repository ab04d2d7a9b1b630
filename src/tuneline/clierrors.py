"""What the CLI says when a command fails: one line that names the thing and what to do; exit 2 for
a failure the user can cause, 1 for an internal error. The checks run before a read-only command
touches the store, so they create nothing (MLflow would create an empty `mlflow.db`).
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import threading
import traceback
from pathlib import Path
from typing import Iterator

INTERRUPTED = "interrupted: nothing half-written; rerun to continue from the finished steps"


class UserError(LookupError):
    """Something the user named is not there (a store, a model, a version, a file)."""


def require_store(uri: str) -> None:
    """A SQLite store must exist already: commands that read the registry never create one."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise UserError(f"no MLflow store at {uri[len('sqlite:///'):]}: nothing is registered in this project yet; "
                        "run `tuneline run` here first, or set MLFLOW_TRACKING_URI to the store that holds the model")


def check_model_uri(uri: str, model_uri: str) -> None:
    """`models:/<name>@<alias>`, `models:/<name>/<version>` and `models:/<name>/<stage>` name
    something in the registry at `uri`; say what is there instead of MLflow's traceback."""
    from tuneline.tracking import runs as tracking

    if (m := re.fullmatch(r"models:/([^/@]+)(?:@(.+)|/(.+))", model_uri)) is None:
        return  # runs:/, a folder, ...: MLflow's own message (one line below) names it
    name, alias, version = m.groups()
    store = tracking.redact(uri)
    if not (versions := tracking.list_versions(uri, name)):
        names = sorted(r.name for r in tracking.client(uri).search_registered_models())
        raise UserError(f"{model_uri}: no registered model {name!r} in {store}; registered models: "
                        f"{', '.join(names) or 'none'} (pass one with --model or --name)")
    listed = ", ".join(f"{v.version}" + (f" @{'/@'.join(a)}" if a else "") for v, a in versions)
    if alias is not None and not any(alias in a for _, a in versions):
        hint = "no champion yet: promote a version with `tuneline promote <version>`" if alias == "champion" \
            else f"no version has the alias {alias!r}"
        raise UserError(f"{model_uri}: {hint}; versions of {name} in {store}: {listed}")
    if version is not None and version != "latest" and not any(
            version == str(v.version) or version.lower() == (v.current_stage or "").lower() for v, _ in versions):
        raise UserError(f"{model_uri}: {name} has no version or stage {version!r} in {store}; versions: {listed}")


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _store_of(exc: BaseException, uri: str) -> str:
    """Which SQLite database a sqlite error came from: the frames say MLflow's or Prefect's."""
    files = " ".join(f.filename for e in _chain(exc) for f in traceback.extract_tb(e.__traceback__))
    if "/prefect/" in files and "/mlflow/" not in files:
        return f"Prefect database {os.environ.get('PREFECT_HOME', '~/.prefect')}/prefect.db"
    return f"MLflow store {uri}"


def _first_line(text: str) -> str:
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def one_line(exc: BaseException, uri: str) -> tuple[str, int]:
    """(message, exit code) for a failed command; `uri` is the project's tracking store (redacted)."""
    chain = _chain(exc)
    for e in chain:
        if isinstance(e, sqlite3.OperationalError):
            text = str(e)
            if "readonly" in text or "read-only" in text:
                return (f"{_store_of(exc, uri)}: attempt to write a readonly database; make it and its folder writable "
                        "for this user, or work in a writable copy of the project"), 2
            if "locked" in text:
                return (f"{_store_of(exc, uri)}: database is locked by another process for longer than the retries "
                        "allow; let the other tuneline command finish (or stop it), then rerun"), 2
    own = any(c.__module__.startswith("tuneline.") for c in type(exc).__mro__)
    if own or isinstance(exc, ValueError) or (isinstance(exc, LookupError) and not isinstance(exc, (KeyError, IndexError))):
        return str(exc), 2  # tuneline's own errors (and config values'), written to be read; validation lists every failure
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}; check the path and its permissions", 2
    if type(exc).__module__.startswith("mlflow"):
        return f"{uri}: {_first_line(exc)}", 2
    return f"internal error: {type(exc).__name__}: {_first_line(exc)} (rerun with --debug for the traceback)", 1


@contextlib.contextmanager
def catching_interrupts() -> Iterator[list[int]]:
    """Note each Ctrl-C (a worker killed by the same signal may fail before the KeyboardInterrupt
    arrives); a second one ends the process at once (the temporary server follows its parent)."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    seen: list[int] = []

    def on_sigint(signum, frame):
        if seen:  # the second Ctrl-C: no more waiting for the clean-up
            os.write(2, f"\n{INTERRUPTED}\n".encode())
            os._exit(130)
        seen.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)


def interrupted(exc: BaseException, pressed: bool) -> bool:
    """Ctrl-C, or what it caused (a worker killed by the same signal) once it was pressed."""
    return pressed or any(isinstance(e, KeyboardInterrupt) for e in _chain(exc))
