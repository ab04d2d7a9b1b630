"""Lineage of a run: code version (git) and data versions (the MD5s DVC records for each file)."""
from __future__ import annotations

import subprocess
from pathlib import Path

from tuneline import __version__
from tuneline.storage import file_md5


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def lineage_tags(root: Path, files: dict[str, Path]) -> dict[str, str]:
    """tuneline's version, the git commit and whether tracked files differ from it, and the MD5 of each file."""
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return {"tuneline.version": __version__, "git.commit": commit or "unknown",
            "git.dirty": "unknown" if status is None else str(bool(status)).lower(),
            **{f"dvc.md5.{name}": file_md5(path) for name, path in files.items() if Path(path).is_file()}}
