"""Select stage: resolve every candidate (pre-trained model × strategy) and record what it costs.

A candidate that fails to load is reported and skipped, unless none is left. Scoring the
candidates on shared folds and choosing the winner happens in the crossval stage.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional

from tuneline.config import SelectConfig, TrainConfig
from tuneline.engine.models import ModelLoadError, model_fingerprint, quiet_transformers, resolve_model
from tuneline.storage import write_json

log = logging.getLogger(__name__)

BASELINE = {"name": "tfidf-logreg", "model": "tfidf", "strategy": "baseline", "resolved": None,
            "fingerprint": "tfidf", "parameters": None, "eligible": True}  # it may win, and then it ships


def check_loadable(name: str, train_cfg: TrainConfig) -> str:
    """Resolve and read the model's config (cheap) so a bad candidate fails before any training."""
    quiet_transformers()
    from transformers import AutoConfig

    resolved = resolve_model(name)
    try:
        AutoConfig.from_pretrained(resolved, trust_remote_code=train_cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"candidate {name!r} cannot be loaded (resolved to {resolved!r}): {exc}") from None
    return resolved


def count_parameters(resolved: str) -> Optional[int]:
    """Parameter count from the safetensors headers, without loading the weights."""
    from safetensors import safe_open

    files = sorted(Path(resolved).glob("*.safetensors")) if Path(resolved).is_dir() else []
    if not files:
        return None
    total = 0
    for f in files:
        with safe_open(str(f), "np") as st:
            total += sum(math.prod(st.get_slice(key).get_shape()) for key in st.keys())
    return total


def candidate_name(model: str, strategy: str) -> str:
    return f"{Path(model).name}:{strategy}"


def select(cfg: SelectConfig, train_cfg: TrainConfig, selection_path: Path) -> dict:
    """Step: the candidates every fold will score, in order, plus the TF-IDF baseline."""
    strategies = cfg.strategies or [train_cfg.strategy]
    candidates, skipped = [], []
    for model in cfg.models:
        try:
            resolved = check_loadable(model, train_cfg)
        except ModelLoadError as exc:
            log.warning("skipping candidate: %s", exc)
            skipped.append({"model": model, "error": str(exc)})
            continue
        params = count_parameters(resolved)
        for strategy in strategies:
            candidates.append({"name": candidate_name(model, strategy), "model": model, "strategy": strategy,
                               "resolved": resolved, "fingerprint": model_fingerprint(resolved),
                               "parameters": params, "eligible": True})
    if not candidates:
        raise ModelLoadError("no candidate model could be loaded:\n  " + "\n  ".join(s["error"] for s in skipped))
    out = {"candidates": candidates + ([BASELINE] if cfg.baseline else []), "skipped": skipped, "metric": cfg.metric}
    write_json(selection_path, out)
    log.info("candidates: %s", ", ".join(c["name"] for c in out["candidates"]))
    return out
