"""Services some tests need and a machine may lack (PostgreSQL, Chromium, OpenSSH's sshd).

A missing service skips the test with a reason that names the service and how to get it. With
TUNELINE_REQUIRE_SERVICES=1 (.ci/run sets it) it fails the test instead, so CI cannot pass by skipping.
"""
from __future__ import annotations

import os
import shutil
import socket

import pytest

REQUIRE_SERVICES = "TUNELINE_REQUIRE_SERVICES"
PG_HOST, PG_PORT = "127.0.0.1", 5432


def missing(service: str, how: str) -> None:
    reason = f"needs {service}; {how}"
    if os.environ.get(REQUIRE_SERVICES) == "1":
        pytest.fail(f"{reason} ({REQUIRE_SERVICES}=1 makes a missing service a failure)", pytrace=False)
    pytest.skip(reason)


def require_postgres() -> None:
    try:
        socket.create_connection((PG_HOST, PG_PORT), timeout=3).close()
    except OSError as exc:
        missing(f"PostgreSQL on {PG_HOST}:{PG_PORT} ({exc.strerror or exc})",
                "install it (apt-get install postgresql), allow user postgres with trust auth from 127.0.0.1 "
                "in pg_hba.conf and start it (service postgresql start)")


def require_chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        missing("Chromium (headless, for the page tests)", "install it: apt-get install chromium (.ci/run does)")
    return exe


SSHD = "/usr/sbin/sshd"  # sshd must be started by its absolute path


def require_sshd() -> str:
    """OpenSSH's server and client tools (ssh-keygen, ssh-agent, ssh-add), for the SSH/SFTP remote."""
    tools = [shutil.which(t) for t in ("ssh-keygen", "ssh-agent", "ssh-add")]
    if not os.access(SSHD, os.X_OK) or None in tools:
        missing("OpenSSH's sshd (an SSH/SFTP server for the DVC ssh remote of the hand-off tests)",
                "install it: apt-get install openssh-server (.ci/run does)")
    return SSHD
