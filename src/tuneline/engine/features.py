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
    """Every core, unless OMP_NUM_THREADS says how many (torchrun sets it for each rank)."""
    import torch

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1))


def pool(hidden, attention_mask, how: str):
    if how == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def embed(texts: Sequence[str], tokenizer, encoder, *, max_length: int, batch_size: int, pooling: str, precision: str = "fp32",
          desc: str = "embedding") -> np.ndarray:
    """Pooled embeddings in input order (batched by length, so each batch pads little)."""
    import torch

    from tuneline.engine.batching import encode, in_length_order
    from tuneline.engine.hardware import autocast

    use_all_cores()
    lengths = [len(ids) for ids in encode(tokenizer, texts, max_length)]
    out = np.empty((len(texts), encoder.config.hidden_size), dtype=np.float32)
    dev = next(encoder.parameters()).device
    with torch.inference_mode(), autocast(precision, dev.type):
        for idx in in_length_order(lengths, batch_size, desc):
            batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(dev)
            hidden = encoder(**batch).last_hidden_state
            out[idx] = pool(hidden.float(), batch["attention_mask"], pooling).cpu().numpy()
    return out


def cache_key(model_id: str, texts: Sequence[str], *parts) -> str:
    """Content address of work on `texts`: the model's fingerprint, then what shapes the result
    (max_length, pooling or frozen layers, precision)."""
    h = hashlib.sha256("|".join(map(str, (model_id, *parts, ""))).encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:24]


class DiskCache:
    """Content-addressed files of work on texts, written atomically by `save(path, value)`. `get`
    computes on a miss and counts the encoder passes; the cost it measured is kept beside the file
    for the latency tie-break when later runs hit the cache. With `memo`, the newest value stays in
    memory, shared by every fold job of the process."""

    _memo: dict[str, tuple[str, object]] = {}  # suffix -> (file path, value): another project's cache never answers

    def __init__(self, cache_dir: Path, suffix: str = ".npy", save=np.save, load=np.load, what: str = "feature",
                 memo: bool = False):
        self.cache_dir, self.suffix, self.save, self.load, self.what = Path(cache_dir), suffix, save, load, what
        self.memo, self.encoder_passes = memo, 0

    def path(self, key: str) -> Path:
        return self.cache_dir / f"{key}{self.suffix}"

    def get(self, key: str, compute):
        path = self.path(key)
        held = DiskCache._memo.get(self.suffix)
        if held is not None and held[0] == str(path) and path.is_file():  # this project's file, already loaded
            return held[1]
        if path.is_file():
            log.info("%s cache hit %s", self.what, path.name)
            value = self.load(path)
        else:
            start = time.perf_counter()
            value = compute()
            seconds = time.perf_counter() - start
            self.encoder_passes += 1
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{os.getpid()}.tmp.{path.name}")  # same suffix: np.save appends none
            self.save(tmp, value)
            os.replace(tmp, path)
            path.with_suffix(".json").write_text(json.dumps({"seconds": seconds, "texts": len(value)}))
        if self.memo:
            DiskCache._memo[self.suffix] = (str(path), value)  # one dataset at a time
        return value

    def seconds_per_text(self, key: str) -> float:
        meta = self.path(key).with_suffix(".json")
        data = json.loads(meta.read_text()) if meta.is_file() else {"seconds": 0.0, "texts": 1}
        return data["seconds"] / max(data["texts"], 1)
