"""Greedy (or seeded sampled) generation (torch/transformers only): a chat model's answers to prompts, an encoder-decoder's
outputs for inputs. Shared by the LLM tasks and summarization."""
from __future__ import annotations

from typing import Optional

from tqdm.auto import tqdm


def _chat_text(tokenizer, prompt) -> str:
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def generate(model, tokenizer, prompts: list, max_new_tokens: int, batch_size: int = 1, seq2seq: bool = False,
             precision: str = "fp32", max_input_tokens: Optional[int] = None, desc: str = "generating",
             sample_seed: Optional[int] = None, temperature: float = 1.0) -> list[str]:
    """One greedy output per prompt, in order (with `sample_seed`: sampled at `temperature`, no top-k/top-p, from that
    seed). A causal model's prompt is a string (one user turn) or a list of messages, rendered with the chat template
    and left-padded; a seq2seq model's is the encoder's text (cut to `max_input_tokens`)."""
    import torch

    from tuneline.engine.hardware import autocast

    dev = next(model.parameters()).device
    texts = list(prompts) if seq2seq else [_chat_text(tokenizer, p) for p in prompts]
    lengths = [len(tokenizer(t, add_special_tokens=seq2seq)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    out: list[str] = [""] * len(texts)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    sampling = {"do_sample": False} if sample_seed is None else {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    if sample_seed is not None:
        torch.manual_seed(sample_seed)
    for batch in tqdm(batches, desc=desc, unit="batch", leave=False):
        enc = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True, padding_side="left" if not seq2seq else "right",
                        add_special_tokens=seq2seq, truncation=max_input_tokens is not None, max_length=max_input_tokens)
        enc = {k: v.to(dev) for k, v in enc.items()}
        with torch.inference_mode(), autocast(precision, dev.type):
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, **sampling,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        start = 0 if seq2seq else enc["input_ids"].shape[1]  # a decoder-only model echoes its prompt
        for i, row in zip(batch, ids):
            out[i] = tokenizer.decode(row[start:], skip_special_tokens=True).strip()
    return out


def answer(model, tokenizer, prompts: list, max_new_tokens: int) -> list[str]:
    """One greedy answer per prompt of a chat model, one prompt at a time (no padding)."""
    return generate(model, tokenizer, prompts, max_new_tokens, batch_size=1)
