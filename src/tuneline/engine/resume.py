"""Work areas that survive a lost process (README, "Reliability"): one folder per fine-tune (a candidate on a
fold, or the refit), named by a hash of everything that decides its result, beside the feature cache and outside
every step's outputs. It holds the checkpoints while the fine-tune runs and, for a fold, its result afterwards.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Optional

from tuneline.config import TrainConfig
from tuneline.engine import checkpoints
from tuneline.storage import file_md5, read_json, write_json

log = logging.getLogger(__name__)

RESULT = "result.json"
CHECKPOINTS = "checkpoints"


def work_dir(cache_dir: Path, kind: str, candidate: dict, cfg: TrainConfig, seed: int, data_file: Path, rows=None) -> Path:
    """The folder of one fine-tune (`kind`: 'fold3', 'refit'), named by everything that decides its result."""
    payload = {
        "kind": kind, "model": candidate.get("fingerprint") or candidate.get("resolved") or candidate["model"],
        "strategy": candidate["strategy"], "seed": seed, "data": file_md5(data_file),
        "rows": hashlib.sha256(json.dumps([int(r) for r in rows]).encode()).hexdigest() if rows is not None else None,
        "train": {k: v for k, v in cfg.model_dump(mode="json").items() if k not in TrainConfig.EXECUTION_ONLY and k != "seed"},
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]
    name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in candidate["name"])
    return Path(cache_dir).parent / "finetune" / f"{name}-{kind}-{digest}"


def checkpoint_dir(work: Path) -> Path:
    return Path(work) / CHECKPOINTS


def finished(work: Path) -> Optional[dict]:
    """A finished fine-tune's saved result, or None."""
    path = Path(work) / RESULT
    if not path.is_file():
        return None
    log.info("reusing the finished %s (%s)", Path(work).name, path)
    return read_json(path)


def save_result(work: Path, result: dict) -> None:
    """Keep the result; the checkpoints have done their job."""
    write_json(Path(work) / RESULT, result)
    checkpoints.written(Path(work) / RESULT)
    shutil.rmtree(checkpoint_dir(work), ignore_errors=True)


def clear(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
