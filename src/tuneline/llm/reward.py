"""The reward a policy is optimised against (llm.preference_method grpo/rloo; README, "RLHF"): a registered
reward model whose version passed its own gate (the `gate.*` tags of tracking.gate.apply_floor), or an adapter
folder, checked here by the same sign test on the project's held-out pairs. selection.json keeps the result.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from tuneline.storage import atomic_path, path_digest

log = logging.getLogger(__name__)

KEY = "llm.reward_model"


class RewardModelError(RuntimeError):
    """The reward model cannot be used: not found, not a reward model, or it did not pass its gate."""


def _refuse(what: str, accuracy: Optional[float], p_value: Optional[float], test: str, alpha: float) -> RewardModelError:
    acc = "unknown" if accuracy is None else f"{accuracy:.4f}"
    return RewardModelError(
        f"{KEY}: {what} did not pass its gate: held-out pairwise accuracy {acc} is not significantly above 0.5 "
        f"({test} p={p_value if p_value is None else f'{p_value:.4g}'}, alpha {alpha}); a policy optimised against it "
        "would learn noise. Train a reward model that passes (more or cleaner pairs), or name another version")


def resolve(spec: str, uri: str, test_pairs: Callable[[], list], alpha: float, batch_size: int) -> dict:
    """The checked reward model: {spec, kind, name, version, run_id, folder, sha256, pairwise_accuracy, floor_p_value, ...}.
    `test_pairs()`: the project's held-out pairs, which check a folder (a registered version carries its own test)."""
    if spec.startswith("models:/"):
        return _registered(spec, uri)
    return _folder(spec, test_pairs(), alpha, batch_size)


def _registered(spec: str, uri: str) -> dict:
    from tuneline.engine.base_model import cache_root
    from tuneline.engine.lora import ADAPTER_META
    from tuneline.tracking.runs import download_folder, registry_version

    try:
        v = registry_version(uri, spec, KEY)
    except LookupError as exc:
        raise RewardModelError(str(exc)) from None
    name, version, tags = v.name, str(v.version), v.tags
    what = f"{spec} ({name} version {version})"
    if tags.get("method") != "reward_model":
        raise RewardModelError(f"{KEY}: {what} is a {tags.get('method')!r} model, not a reward model (preference_method=reward_model)")
    accuracy = float(tags["test.pairwise_accuracy"]) if "test.pairwise_accuracy" in tags else None
    if "gate.above_floor" not in tags:
        raise RewardModelError(f"{KEY}: {what} (held-out pairwise accuracy {accuracy}) has no recorded gate test (gate.* tags): "
                               "it was registered before the significance floor existed or its promote step never ran; "
                               "run its promote step, or train and register it again")
    if tags["gate.above_floor"] != "true":
        raise _refuse(what, accuracy, float(tags["gate.floor_p_value"]), tags.get("gate.floor_test", "?"), float(tags["gate.floor_alpha"]))
    folder = cache_root() / "reward-models" / f"{name}-v{version}-{v.run_id[:12]}"
    if not folder.is_dir():
        with atomic_path(folder) as tmp:
            tmp.mkdir(parents=True)
            adapter = download_folder(uri, name, version, tmp, ADAPTER_META)
            if adapter != tmp:  # keep the adapter folder itself
                staged = tmp.with_name(tmp.name + ".adapter")
                shutil.move(str(adapter), staged)
                shutil.rmtree(tmp)
                staged.rename(tmp)
    log.info("reward model %s: %s v%s, held-out pairwise accuracy %s (%s p=%s)", spec, name, version, accuracy,
             tags.get("gate.floor_test"), tags.get("gate.floor_p_value"))
    return {"spec": spec, "kind": "registry", "name": name, "version": version, "run_id": v.run_id, "folder": str(folder),
            "sha256": path_digest(folder), "pairwise_accuracy": accuracy, "floor_p_value": float(tags["gate.floor_p_value"]),
            "floor_test": tags["gate.floor_test"]}


def _folder(spec: str, test_pairs: list, alpha: float, batch_size: int) -> dict:
    from tuneline.engine.adapters import AdapterError, read_meta
    from tuneline.engine.base_model import base_from_reference
    from tuneline.llm.evaluation import evaluate_adapter
    from tuneline.llm.metrics import row_scores
    from tuneline.tracking.gate import pairwise_floor

    folder = Path(spec).expanduser().resolve()
    try:
        meta = read_meta(folder)
    except AdapterError as exc:
        raise RewardModelError(f"{KEY} {spec!r}: not models:/… and not a reward-model adapter folder ({exc})") from None
    if meta.get("method") != "reward_model":
        raise RewardModelError(f"{KEY} {spec!r}: a {meta.get('method')!r} adapter, not a reward model")
    if not test_pairs or not all(p.get("chosen") for p in test_pairs):
        raise RewardModelError(f"{KEY} {spec!r}: a folder has no registry record of its gate, so it is checked on this "
                               "project's held-out preference pairs, and the test split has none; register it instead")
    ev = evaluate_adapter(folder, base_from_reference(meta["base"]).folder, test_pairs, batch_size)
    floor = pairwise_floor(row_scores("reward_model", ev["scores"])["wins"])
    accuracy = ev["metrics"]["pairwise_accuracy"]
    if floor.p_value >= alpha:
        raise _refuse(f"{spec} (checked on this project's {len(test_pairs)} held-out pairs)", accuracy, floor.p_value, floor.test, alpha)
    return {"spec": spec, "kind": "folder", "name": folder.name, "version": None, "run_id": None, "folder": str(folder),
            "sha256": path_digest(folder), "pairwise_accuracy": accuracy, "floor_p_value": floor.p_value, "floor_test": floor.test}


def check_folder(ref: dict) -> Path:
    """The reward model a later step loads is still the one select checked (its hash)."""
    folder = Path(ref["folder"])
    if path_digest(folder) != ref["sha256"]:
        raise RewardModelError(f"{KEY}: {folder} changed since the select step checked it (hash {ref['sha256'][:20]}…); re-run select")
    return folder


class RewardScorer:
    """A reward-model adapter loaded once: scores (prompt messages, response) pairs with the function
    its own evaluation used (tuneline.llm.metrics.rewards), and is trl's `reward_funcs` callable."""

    def __init__(self, ref: dict, batch_size: int):
        from tuneline.engine.adapters import load_adapter, read_meta
        from tuneline.engine.base_model import base_from_reference

        folder = check_folder(ref)
        self.model, self.tokenizer, _ = load_adapter(folder, base_from_reference(read_meta(folder)["base"]).folder)
        self.batch_size = batch_size
        self.__name__ = "reward_model"  # trl names the logged reward after it

    def score(self, prompts: list, responses: list[str]) -> np.ndarray:
        from tuneline.llm.metrics import rewards

        return rewards(self.model, self.tokenizer, prompts, responses, self.batch_size, "scoring with the reward model")

    def __call__(self, prompts: list, completions: list, **_) -> list[float]:
        responses = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return self.score(prompts, responses).tolist()
