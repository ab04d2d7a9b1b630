"""A real SSH/SFTP server for the hand-off tests: Debian's OpenSSH `sshd` on a free port of
127.0.0.1, with its own host key, authorized_keys and config in a temporary folder, and an
`ssh-agent` that holds the client key: clients authenticate through SSH_AUTH_SOCK, from the
environment, as a team member's shell would (no key path or password in any file of the project).
"""
from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from conftest import free_port, stop_process
from services import require_sshd


@dataclass
class SSHServer:
    port: int
    root: Path  # the folder on the "server" that holds the team's store
    agent_sock: Path
    log: Path

    def url(self, sub: str) -> str:
        return f"ssh://root@127.0.0.1:{self.port}{self.root / sub}"

    def client_env(self) -> dict[str, str]:
        return {"SSH_AUTH_SOCK": str(self.agent_sock)}


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"sshd did not answer on port {port} within {timeout} s:\n{log.read_text()[-3000:]}")


def start_ssh_server(base: Path):
    """Start sshd + ssh-agent in `base`; a generator: yields the SSHServer, stops both after."""
    sshd = require_sshd()
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o700)
    keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", ""]
    subprocess.run([*keygen, "-f", str(base / "host_key")], check=True)
    subprocess.run([*keygen, "-f", str(base / "client_key")], check=True)
    (base / "authorized_keys").write_text((base / "client_key.pub").read_text())
    port = free_port()
    (base / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {base / 'host_key'}",
        f"AuthorizedKeysFile {base / 'authorized_keys'}", f"PidFile {base / 'sshd.pid'}",
        "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password",
        "Subsystem sftp internal-sftp", "MaxStartups 50", "MaxSessions 50", "LogLevel INFO", ""]))
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation folder
    log = base / "sshd.log"
    logf = open(log, "w")
    server = subprocess.Popen([sshd, "-D", "-e", "-f", str(base / "sshd_config")], stdout=logf, stderr=subprocess.STDOUT,
                              start_new_session=True)
    agent = None
    try:
        _wait_port(port, server, log)
        sock = base / "agent.sock"
        agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        subprocess.run(["ssh-add", "-q", str(base / "client_key")], env=os.environ | {"SSH_AUTH_SOCK": str(sock)}, check=True)
        (base / "store").mkdir()
        yield SSHServer(port=port, root=base / "store", agent_sock=sock, log=log)
    finally:
        if agent is not None:
            stop_process(agent)
        stop_process(server)
        logf.close()
