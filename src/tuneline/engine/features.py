"""Frozen-encoder features: pooled embeddings computed once per (model, texts) and cached on disk."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)


def use_all_cores() -> None:
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))


def pool(hidden, attention_mask, how: str):
    if how == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def embed(
    texts: Sequence[str], tokenizer, encoder, *, max_length: int, batch_size: int, pooling: str, precision: str = "fp32",
    desc: str = "embedding",
) -> np.ndarray:
    """Pooled embeddings in input order. Texts are sorted by length so each batch pads little;
    precision bf16 runs the encoder under bf16 autocast (tuneline.engine.hardware)."""
    import torch
    from tqdm.auto import tqdm

    from tuneline.engine.hardware import autocast

    use_all_cores()
    lengths = [len(ids) for ids in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    out = np.empty((len(texts), encoder.config.hidden_size), dtype=np.float32)
    dev = next(encoder.parameters()).device
    with torch.inference_mode(), autocast(precision, dev.type), tqdm(total=len(texts), desc=desc, unit="text", leave=False) as bar:
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(dev)
            hidden = encoder(**batch).last_hidden_state
            out[idx] = pool(hidden.float(), batch["attention_mask"], pooling).cpu().numpy()
            bar.update(len(idx))
    return out


def cache_key(model_id: str, texts: Sequence[str], *parts) -> str:
    """Content address of work on `texts`: the model's fingerprint, then what shapes the result
    (max_length, pooling or frozen layers, precision)."""
    h = hashlib.sha256("|".join(map(str, (model_id, *parts, ""))).encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:24]


class FeatureCache:
    """Content-addressed .npy files; `get` reports whether the encoder had to run."""

    def __init__(self, cache_dir: Path):
        self.cache_dir = Path(cache_dir)
        self.encoder_passes = 0

    def get(self, key: str, compute) -> np.ndarray:
        path = self.cache_dir / f"{key}.npy"
        if path.is_file():
            log.info("feature cache hit %s", path.name)
            return np.load(path)
        start = time.perf_counter()
        feats = compute()
        seconds = time.perf_counter() - start
        self.encoder_passes += 1
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, feats)
        os.replace(tmp, path)
        # the encoder's measured cost, kept for the latency tie-break when later runs hit the cache
        path.with_suffix(".json").write_text(json.dumps({"seconds": seconds, "texts": len(feats)}))
        return feats

    def seconds_per_text(self, key: str) -> float:
        meta = self.cache_dir / f"{key}.json"
        if not meta.is_file():
            return 0.0
        data = json.loads(meta.read_text())
        return data["seconds"] / max(data["texts"], 1)
