"""Training checkpoints: enough state to continue a fine-tune exactly where a lost process stopped (README,
"Reliability"); batch order is a pure function of (seed, epoch), so skipping the batches already done replays the
same stream. torch only. A caller may watch the files written (`publishing`): a work pool's worker copies each
one, as it lands, to the team's store (tuneline.pipeline.handoff).
"""
from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from tuneline.storage import atomic_path

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step-(\d{9})\.pt$")
_listeners: list[Callable[[Path], None]] = []


@contextlib.contextmanager
def publishing(listener: Callable[[Path], None]) -> Iterator[None]:
    """While inside, call `listener(path)` after each file of resumable state is complete on disk
    (a checkpoint, a finished fine-tune's result), before training goes on."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def written(path: Path) -> None:
    for listener in list(_listeners):
        listener(Path(path))


def _steps(folder: Path) -> list[tuple[int, Path]]:
    return sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))) if folder.is_dir() else []


def latest(folder: Optional[Path]) -> Optional[Path]:
    """The newest complete checkpoint in `folder`, or None."""
    steps = _steps(Path(folder)) if folder is not None else []
    return steps[-1][1] if steps else None


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Only what training changes: frozen weights come back identical from the pre-trained files."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(folder: Path, step: int, state: dict) -> Path:
    """Write `state` as the checkpoint of `step` (temp file + rename), then drop older ones."""
    final = Path(folder) / f"step-{step:09d}.pt"
    with atomic_path(final) as tmp:
        torch.save(state, tmp)
    written(final)
    for s, p in _steps(final.parent):
        if s < step:
            p.unlink(missing_ok=True)
    return final


def load(path: Path) -> dict:
    # weights_only: a checkpoint holds tensors, numbers, lists and dicts only — never code.
    return torch.load(path, map_location="cpu", weights_only=True)
