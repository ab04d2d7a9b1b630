"""Which process owns a registration run (host, PID and the PID's start time, as PIDs are reused:
recorded in the run's first write), and whether it still lives: on this host by asking the OS, on
another host only by the run's age.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Optional

HOST, PID, PID_STARTED = "tuneline.host", "tuneline.pid", "tuneline.pid_started"
# A run registering on another host cannot be checked from here; after this long it is presumed dead.
OTHER_HOST_STALE_S = 24 * 3600


def process_tags() -> dict[str, str]:
    import psutil

    return {HOST: socket.gethostname(), PID: str(os.getpid()), PID_STARTED: f"{psutil.Process().create_time():.2f}"}


def why_dead(run) -> Optional[str]:
    """None while the run's process may still be writing it; else why the run is a leftover."""
    import psutil

    info, tags = run.info, run.data.tags
    if info.status not in ("RUNNING", "SCHEDULED"):
        return f"ended {info.status}"
    if PID not in tags:  # a run of a tuneline that did not record its process: only a dead one stays RUNNING
        return "RUNNING, with no owning process recorded"
    owner = f"pid {tags[PID]} on {tags.get(HOST, '?')}"
    if tags.get(HOST) != socket.gethostname():
        age = time.time() - info.start_time / 1000
        return f"RUNNING for {age / 3600:.0f} h ({owner})" if age > OTHER_HOST_STALE_S else None
    try:
        alive = abs(psutil.Process(int(tags[PID])).create_time() - float(tags.get(PID_STARTED, 0))) < 1.0
    except (psutil.Error, ValueError):
        alive = False
    return None if alive else f"RUNNING, but its process ({owner}) is gone"
