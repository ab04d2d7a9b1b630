"""Greedy answers of a chat model to prompts (torch/transformers only)."""
from __future__ import annotations

from tqdm.auto import tqdm


def answer(model, tokenizer, prompts: list, max_new_tokens: int) -> list[str]:
    """One greedy answer per prompt; a prompt is a string (one user turn) or a list of messages."""
    import torch

    dev = next(model.parameters()).device
    answers = []
    for prompt in tqdm(prompts, desc="generating", unit="prompt", leave=False):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        enc = {k: v.to(dev) for k, v in enc.items()}
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        answers.append(tokenizer.decode(out[0][enc["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return answers
