"""Headless Chromium (Debian's package) for page checks; flags as this machine's network needs."""
from __future__ import annotations

import subprocess
from pathlib import Path

from services import require_chromium

ARTIFACTS = Path(__file__).parent / "artifacts"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
]


def _run(url: str, tmp: Path, extra: list[str]) -> subprocess.CompletedProcess:
    args = [require_chromium(), *FLAGS, f"--user-data-dir={tmp / 'chrome-profile'}", *extra, url]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=True)


def dump_dom(url: str, tmp: Path, wait_ms: int = 0, size: str = "1800,1000") -> str:
    """The DOM after load (and `wait_ms` of virtual time for pages that fetch their data)."""
    extra = ["--dump-dom", f"--window-size={size}"] + ([f"--virtual-time-budget={wait_ms}"] if wait_ms else [])
    return _run(url, tmp, extra).stdout


def screenshot(url: str, tmp: Path, name: str, size: str = "1400,1000", wait_ms: int = 0) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    out = ARTIFACTS / name
    extra = [f"--screenshot={out}", f"--window-size={size}"] + ([f"--virtual-time-budget={wait_ms}"] if wait_ms else [])
    _run(url, tmp, extra)
    return out
