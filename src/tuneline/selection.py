"""Model selection. For now the first configured candidate that loads; scoring across candidates
on shared folds is the model-selection issue's work."""
from __future__ import annotations

import logging
from pathlib import Path

from tuneline.config import SelectConfig, TrainConfig
from tuneline.models import ModelLoadError, model_fingerprint, quiet_transformers, resolve_model
from tuneline.storage import write_json

log = logging.getLogger(__name__)


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


def select(cfg: SelectConfig, train_cfg: TrainConfig, selection_path: Path) -> dict:
    """Step: pick the candidate to fine-tune; write selection.json."""
    errors = []
    for cand in cfg.candidates:
        try:
            resolved = check_loadable(cand.model, train_cfg)
        except ModelLoadError as exc:
            log.warning("skipping candidate: %s", exc)
            errors.append(str(exc))
            continue
        chosen = {
            "model": cand.model,
            "strategy": cand.strategy,
            "resolved": resolved,
            "fingerprint": model_fingerprint(resolved),
            "rule": "first loadable candidate",
            "skipped": errors,
        }
        write_json(selection_path, chosen)
        log.info("selected %s (%s)", cand.model, cand.strategy)
        return chosen
    raise ModelLoadError("no candidate model could be loaded:\n  " + "\n  ".join(errors))
