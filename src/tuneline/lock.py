"""One run at a time per project: an OS advisory lock held by `tuneline run` and `tuneline stage`.

`flock` dies with its process, so a crash or a `kill -9` never leaves a stale lock behind. The lock
file records who holds it (host, PID, command, since) for the message a second run prints: on a
shared (NFS) project a PID alone names the wrong process. Base layer: imports nothing of tuneline.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

LOCK_PATH = Path(".cache") / "project.lock"
_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)


class ProjectLockError(RuntimeError):
    """The project lock cannot be had (busy, and not to be waited for; or the project is read-only: the
    lock is a run's first write, so it fails first). The message names the lock file and what to do."""


def _holder(fh) -> str:
    """Who holds the lock, from what it wrote into the file (it may not have written yet)."""
    for _ in range(20):
        fh.seek(0)
        text = fh.read()
        with contextlib.suppress(ValueError):
            h = json.loads(text)
            return f"{h['command']} (pid {h['pid']} on host {h['host']}, since {h['since']})"
        time.sleep(0.05)
    return "another tuneline process"


@contextlib.contextmanager
def project_lock(root: Path | str, command: str, wait: bool = True) -> Iterator[Path]:
    """Hold the project's lock for the duration. A busy lock is waited for (said once, with whom it
    waits for), or with `wait=False` raises ProjectLockError naming the holder and the lock file."""
    path = (Path(root) / LOCK_PATH).resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+", encoding="utf-8")
    except OSError as exc:
        if exc.errno not in _READ_ONLY:
            raise
        raise ProjectLockError(f"project {path.parents[1]} is not writable by this user ({path}: {exc.strerror}); "
                              f"`{command}` writes its outputs there: make it writable or work in a writable copy") from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fh)
            if not wait:
                raise ProjectLockError(f"project busy: {holder} holds {path}; wait for it to finish, "
                                  "or rerun without --no-wait to queue behind it") from None
            log.warning("waiting for %s holding %s", holder, path)
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"command": command, "pid": os.getpid(), "host": socket.gethostname(),
                             "since": datetime.now().isoformat(timespec="seconds")}))
        fh.flush()
        _fault_hold()
        try:
            yield path
        finally:
            # Emptied, not deleted: deleting would let a waiter lock a file a third process no longer sees.
            with contextlib.suppress(OSError):
                fh.truncate(0)
                fh.flush()


def _fault_hold() -> None:
    """Test switch: TUNELINE_FAULT=hold-lock:<seconds> keeps the lock that long before the work starts,
    so a test can start a second, real process against a held lock."""
    fault = os.environ.get("TUNELINE_FAULT", "")
    if fault.startswith("hold-lock:"):
        log.warning("fault hold-lock: pid %d holds the project lock", os.getpid())
        time.sleep(float(fault.split(":", 1)[1]))
