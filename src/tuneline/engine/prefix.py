"""The frozen-prefix cache of `partial` fine-tuning (README, "The frozen-prefix cache"; torch/transformers only).

Training on the cache runs the model's OWN forward (its head, its attention-mask handling) with the embeddings
block swapped for a stub that returns the cached states and the frozen layers for pass-throughs, for the duration
of one call; an architecture where that does not reproduce the plain forward is detected on a few texts.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from tuneline.engine.batching import encode, in_length_order, make_collate
from tuneline.engine.features import DiskCache, pool
from tuneline.engine.hardware import autocast

log = logging.getLogger(__name__)

FILE_SUFFIX = ".prefix.safetensors"


class _GivenStates(torch.nn.Module):
    """Stands in for the embeddings block: the input is already the frozen prefix's output."""

    def forward(self, *args, inputs_embeds=None, **kwargs):
        return inputs_embeds


class _PassThrough(torch.nn.Module):
    """Stands in for a frozen layer whose output the cache already holds."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def embeddings_slot(base) -> tuple[torch.nn.Module, str]:
    """(parent, attribute) of the block that holds the input embedding table."""
    table = base.get_input_embeddings().weight
    for name, module in base.named_children():
        if any(p is table for p in module.parameters()):
            return base, name
    raise ValueError(f"cannot find the embeddings block of {type(base).__name__}")


def layers(base) -> torch.nn.ModuleList:
    """The encoder's list of transformer blocks, found by shape rather than by name."""
    n = base.config.num_hidden_layers
    for module in base.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"cannot find the {n} transformer layers of {type(base).__name__} to freeze")


def frozen_modules(model, freeze: int) -> list[torch.nn.Module]:
    """The embeddings block and the bottom `freeze` layers."""
    base = model.base_model
    parent, name = embeddings_slot(base)
    return [getattr(parent, name), *layers(base)[:freeze]]


@contextlib.contextmanager
def swapped(model, freeze: int):
    """Within the block, `model(inputs_embeds=<cached states>, attention_mask=...)` runs only the
    trainable top and the head. The real modules are always put back."""
    base = model.base_model
    parent, name = embeddings_slot(base)
    stack = layers(base)
    embeddings, bottom = getattr(parent, name), [stack[i] for i in range(freeze)]
    setattr(parent, name, _GivenStates())
    for i in range(freeze):
        stack[i] = _PassThrough()
    try:
        yield
    finally:
        setattr(parent, name, embeddings)
        for i, layer in enumerate(bottom):
            stack[i] = layer


class _Stop(Exception):
    pass


def compute(model, tokenizer, texts: Sequence[str], max_length: int, freeze: int, precision: str,
            batch_size: int = 128, desc: str = "frozen prefix") -> "PrefixStates":
    """Run the embeddings and the bottom `freeze` layers once over `texts` (eval mode, no grad)."""
    base = model.base_model
    parent, name = embeddings_slot(base)
    last = layers(base)[freeze - 1] if freeze > 0 else getattr(parent, name)
    captured = {}

    def hook(module, args, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    ids = encode(tokenizer, texts, max_length)
    lengths = np.array([len(i) for i in ids], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    hidden = torch.empty((int(offsets[-1]), model.config.hidden_size), dtype=dtype)
    dev = next(model.parameters()).device
    pad = make_collate(tokenizer.pad_token_id)
    was_training = model.training
    model.eval()
    handle = last.register_forward_hook(hook)
    try:
        with torch.inference_mode(), autocast(precision, dev.type):
            for idx in in_length_order(lengths, batch_size, desc):
                batch = pad([{"input_ids": ids[i]} for i in idx])
                try:
                    model(**{k: v.to(dev) for k, v in batch.items()})
                except _Stop:
                    pass
                h = captured.pop("h").to("cpu", dtype)
                for r, i in enumerate(idx):
                    hidden[offsets[i] : offsets[i + 1]] = h[r, : lengths[i]]
    finally:
        handle.remove()
        model.train(was_training)
    return PrefixStates(hidden, torch.from_numpy(offsets))


def collate(states: "PrefixStates"):
    """Batches of cached states for LabelledRows("row", ...) items; the model reads them as `inputs_embeds`."""

    def gather(items: list[dict]) -> dict[str, torch.Tensor]:
        h, mask = states.batch([it["row"] for it in items], torch.float32)
        batch = {"inputs_embeds": h, "attention_mask": mask}
        if "labels" in items[0]:
            batch["labels"] = torch.tensor([it["labels"] for it in items], dtype=torch.long)
        return batch

    return gather


class PrefixStates:
    """Per-text hidden states, flat: row i is hidden[offsets[i]:offsets[i+1]]."""

    def __init__(self, hidden: torch.Tensor, offsets: torch.Tensor, rows: np.ndarray | None = None):
        self.hidden, self.offsets = hidden, offsets
        self.rows = np.arange(len(offsets) - 1) if rows is None else np.asarray(rows)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def lengths(self) -> np.ndarray:
        off = self.offsets.numpy()
        return off[self.rows + 1] - off[self.rows]

    def take(self, rows: Sequence[int]) -> "PrefixStates":
        """A view of some rows (positions relative to this view), sharing the storage."""
        return PrefixStates(self.hidden, self.offsets, self.rows[np.asarray(rows, dtype=np.int64)])

    def batch(self, positions: Sequence[int], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(states [B, L, H] zero-padded, attention mask [B, L]) of view positions."""
        rows = self.rows[np.asarray(positions, dtype=np.int64)]
        off = self.offsets
        lens = [int(off[r + 1] - off[r]) for r in rows]
        states = torch.zeros((len(rows), max(lens), self.hidden.shape[1]), dtype=dtype)
        mask = torch.zeros((len(rows), max(lens)), dtype=torch.long)
        for b, (r, n) in enumerate(zip(rows, lens)):
            states[b, :n] = self.hidden[off[r] : off[r] + n]
            mask[b, :n] = 1
        return states, mask


def save(path: Path, states: PrefixStates) -> None:
    from safetensors.torch import save_file

    save_file({"hidden": states.hidden.contiguous(), "offsets": states.offsets.contiguous()}, str(path))


def load(path: Path) -> PrefixStates:
    from safetensors.torch import load_file

    t = load_file(str(path))
    return PrefixStates(t["hidden"], t["offsets"])


def pooled(encoder, states: "PrefixStates", freeze: int, pooling: str, precision: str, batch_size: int = 128,
           desc: str = "embedding from the frozen prefix") -> np.ndarray:
    """Pooled last hidden states of `encoder` (an AutoModel) for cached texts: only the layers above
    the prefix run. Equal to embedding the texts from scratch up to bf16 rounding of the cached states."""
    dev = next(encoder.parameters()).device
    out = np.empty((len(states), encoder.config.hidden_size), dtype=np.float32)
    encoder.eval()
    with torch.inference_mode(), autocast(precision, dev.type), swapped(encoder, freeze):
        for idx in in_length_order(states.lengths, batch_size, desc):
            h, mask = states.batch(idx, torch.float32)
            hidden = encoder(inputs_embeds=h.to(dev), attention_mask=mask.to(dev)).last_hidden_state
            out[idx] = pool(hidden.float(), mask.to(dev), pooling).cpu().numpy()
    return out


def estimated_mb(tokenizer, texts: Sequence[str], max_length: int, hidden_size: int, precision: str) -> float:
    tokens = sum(map(len, encode(tokenizer, texts, max_length)))
    return tokens * hidden_size * (2 if precision == "bf16" else 4) / 2**20


def agrees(model, tokenizer, texts: Sequence[str], max_length: int, freeze: int, tol: float = 1e-3) -> bool:
    """Does the swapped forward reproduce the plain one on these texts (fp32, eval mode)?"""
    sample = list(texts)[:4]
    try:
        states = compute(model, tokenizer, sample, max_length, freeze, "fp32", desc="checking the prefix cache")
        was = model.training
        model.eval()
        with torch.inference_mode():
            batch = tokenizer(sample, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            dev = next(model.parameters()).device
            plain = model(input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev)).logits
            h, mask = states.batch(range(len(sample)), torch.float32)
            with swapped(model, freeze):
                cached = model(inputs_embeds=h.to(dev), attention_mask=mask.to(dev)).logits
        model.train(was)
        return bool(torch.allclose(plain, cached, atol=tol, rtol=0))
    except Exception as exc:  # an architecture the swap cannot drive: train plainly
        log.warning("frozen-prefix cache unavailable for %s (%s)", type(model).__name__, exc)
        return False


def cache(cache_dir: Path) -> DiskCache:
    """Prefix files beside the feature cache; the newest set stays in memory for every fold job."""
    return DiskCache(cache_dir, FILE_SUFFIX, save, load, "frozen-prefix", memo=True)
