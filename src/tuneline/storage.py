"""Atomic file output: a stage never leaves a half-written file where the next stage would read it."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces `path` (file or folder) in one rename."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    # A killed process leaves its temporary copy behind (a fine-tuned model: hundreds of MB); the
    # next write of the same output clears it. (One writer per output path, as the steps are.)
    for stale in final.parent.glob(f".{final.name}.*"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent)) / final.name
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            old = final.with_name(f".{final.name}.old")  # a stale one was cleared above
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def user_cache_dir(*parts: str) -> Path:
    """<user cache dir>/tuneline/<parts>: what is kept once per machine, outside any project."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "tuneline" / Path(*parts)


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _jsonable(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, (np.generic, np.ndarray)):  # a numpy scalar's tolist() is the Python scalar
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def remove_outputs(*paths: str | os.PathLike) -> None:
    """Delete a stage's previous outputs before it runs (as `dvc repro` does), so a failure leaves none."""
    for p in map(Path, paths):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def file_md5(path: str | os.PathLike) -> str:
    """MD5 of a file's bytes: the hash DVC 3 records for a file output."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()


def slug(name: str) -> str:
    """A candidate or study name as a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


ABSENT = "absent"


def path_digest(path: str | os.PathLike) -> str:
    """MD5 of a file; for a folder, a hash of every file's relative path and MD5; 'absent' if missing."""
    path = Path(path)
    if path.is_file():
        return file_md5(path)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(path).as_posix()}\0{file_md5(f)}\n".encode())
        return "dir:" + h.hexdigest()
    return ABSENT
