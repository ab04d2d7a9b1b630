"""Held-out metrics for the LLM tasks (torch/transformers only).

- chat SFT: mean token loss on the assistant's tokens (as the trainer masks them) and perplexity;
- DPO: implicit reward r = beta * (log pi(y|x) - log pi_ref(y|x)), the reference being the base
  (adapter disabled); preference accuracy = share of pairs with r(chosen) > r(rejected) (a tie
  counts half, so the untrained base scores exactly 0.5), and the mean margin r(chosen) - r(rejected);
  also whether each model alone gives the chosen reply the higher log-likelihood;
- reward model: pairwise accuracy = share of pairs where the reward of chosen beats rejected.
Sequences are tokenized like trl does: the chat-rendered prompt, then the rest of prompt+reply.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
from tqdm.auto import tqdm

from tuneline.llm import chat


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def completion_ids(tokenizer, prompt: list[dict], response: str) -> tuple[list[int], list[int]]:
    p = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": response}], tokenize=True, return_dict=True)["input_ids"]
    cut = _common_prefix(p, full)
    return full[:cut], full[cut:]


def _pad(seqs: list[list[int]], masks: list[list[int]], pad_id: int):
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    loss_mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
        loss_mask[i, : len(m)] = torch.tensor(m, dtype=torch.bool)
    return ids, attn, loss_mask


def token_logps(model, seqs: list[list[int]], masks: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Per sequence: sum of log p(token | earlier) over masked tokens, and how many there were.

    Sequences are left-padded (explicit position ids, so the result does not depend on padding) and
    the vocabulary projection runs only over the tail that holds masked tokens: for preference
    pairs the reply, a fraction of prompt + reply.
    """
    import torch

    dev = next(model.parameters()).device
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    keep = 2
    for i, (s, m) in enumerate(zip(seqs, masks)):
        ids[i, width - len(s):] = torch.tensor(s)
        attn[i, width - len(s):] = 1
        mask[i, width - len(s):] = torch.tensor(m, dtype=torch.bool)
        first = next((j for j, v in enumerate(m) if v), len(m))
        keep = max(keep, len(s) - first + 1)
    keep = min(keep, width)
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    ids, attn, mask, positions = ids.to(dev), attn.to(dev), mask.to(dev), positions.to(dev)
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=attn, position_ids=positions, logits_to_keep=keep).logits[:, :-1].float()
        target = ids[:, width - keep + 1:]
        logp = torch.log_softmax(logits, dim=-1).gather(-1, target[..., None]).squeeze(-1)
        m = mask[:, width - keep + 1:]
        return (logp * m).sum(-1).cpu().numpy(), m.sum(-1).cpu().numpy()


def _batches(items: list, size: int, desc: str):
    for start in tqdm(range(0, len(items), size), desc=desc, unit="batch", leave=False):
        yield items[start:start + size]


def _by_length(seqs: list[list[int]], masks: list[list[int]], model, pad_id: int, size: int, desc: str):
    """token_logps over batches of similar length (little padding), returned in the original order."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    lp, n = np.zeros(len(seqs)), np.zeros(len(seqs))
    for batch in _batches(order, size, desc):
        lp[batch], n[batch] = token_logps(model, [seqs[i] for i in batch], [masks[i] for i in batch], pad_id)
    return lp, n


def response_logps(model, tokenizer, prompts: list, responses: list[str], batch_size: int, desc: str) -> np.ndarray:
    seqs, masks = [], []
    for p, r in zip(prompts, responses):
        head, tail = completion_ids(tokenizer, p, r)
        seqs.append(head + tail)
        masks.append([0] * len(head) + [1] * len(tail))
    return _by_length(seqs, masks, model, tokenizer.pad_token_id, batch_size, desc)[0]


def dpo_scores(model, tokenizer, pairs: list[dict], beta: float, batch_size: int) -> dict[str, np.ndarray]:
    """Log-probs of chosen/rejected under the adapter (policy) and with it disabled (reference)."""
    prompts = [p["prompt"] for p in pairs]
    out = {}
    for name, ctx in (("policy", contextlib.nullcontext()), ("reference", model.disable_adapter())):
        with ctx:
            for side in ("chosen", "rejected"):
                out[f"{name}_{side}"] = response_logps(model, tokenizer, prompts, [p[side] for p in pairs], batch_size, f"scoring {name} {side}")
    out["reward_chosen"] = beta * (out["policy_chosen"] - out["reference_chosen"])
    out["reward_rejected"] = beta * (out["policy_rejected"] - out["reference_rejected"])
    return out


def _wins(a: np.ndarray, b: np.ndarray) -> float:
    """Share of a > b, ties counting half."""
    return float(np.mean((a > b) + 0.5 * (a == b))) if len(a) else float("nan")


def preference_metrics(scores: dict[str, np.ndarray]) -> dict[str, float]:
    margin = scores["reward_chosen"] - scores["reward_rejected"]
    return {
        "preference_accuracy": _wins(scores["reward_chosen"], scores["reward_rejected"]),
        "mean_margin": float(np.mean(margin)) if len(margin) else float("nan"),
        "policy_logp_accuracy": _wins(scores["policy_chosen"], scores["policy_rejected"]),
        "reference_logp_accuracy": _wins(scores["reference_chosen"], scores["reference_rejected"]),
        "pairs": float(len(margin)),
    }


def reward_scores(model, tokenizer, pairs: list[dict], batch_size: int) -> dict[str, np.ndarray]:
    """The reward head's score of prompt+chosen and prompt+rejected, rendered as the RewardTrainer does."""
    import torch

    dev = next(model.parameters()).device
    out = {}
    for side in ("chosen", "rejected"):
        seqs = [tokenizer.apply_chat_template(p["prompt"] + [{"role": "assistant", "content": p[side]}], tokenize=True,
                                              return_dict=True)["input_ids"] for p in pairs]
        values = np.zeros(len(seqs))
        for batch in _batches(sorted(range(len(seqs)), key=lambda i: len(seqs[i])), batch_size, f"scoring rewards {side}"):
            ids, attn, _ = _pad([seqs[i] for i in batch], [[] for _ in batch], tokenizer.pad_token_id)
            with torch.no_grad():
                values[batch] = model(input_ids=ids.to(dev), attention_mask=attn.to(dev)).logits[:, 0].float().cpu().numpy()
        out[f"reward_{side}"] = values
    return out


def reward_metrics(scores: dict[str, np.ndarray]) -> dict[str, float]:
    margin = scores["reward_chosen"] - scores["reward_rejected"]
    return {"pairwise_accuracy": _wins(scores["reward_chosen"], scores["reward_rejected"]),
            "mean_margin": float(np.mean(margin)) if len(margin) else float("nan"), "pairs": float(len(margin))}


def sft_scores(model, tokenizer, conversations: list[list[dict]], batch_size: int) -> dict[str, np.ndarray]:
    """Per conversation: summed log-prob of its assistant tokens (those inside {% generation %}) and their count."""
    template = chat.training_chat_template(tokenizer) or tokenizer.chat_template
    seqs, masks = [], []
    for conv in conversations:
        enc = tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                            chat_template=template)
        seqs.append(list(enc["input_ids"]))
        masks.append(list(enc["assistant_masks"]))
    lp, n = _by_length(seqs, masks, model, tokenizer.pad_token_id, batch_size, "scoring conversations")
    return {"logp": lp, "tokens": n}


def sft_metrics(scores: dict[str, np.ndarray]) -> dict[str, float]:
    """Token-weighted loss over assistant tokens and its perplexity."""
    total, count = float(np.sum(scores["logp"])), int(np.sum(scores["tokens"]))
    loss = -total / max(count, 1)
    return {"eval_loss": loss, "perplexity": math.exp(loss), "tokens": float(count)}


def row_scores(method: str, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The per-row arrays the task's promotion metric is a statistic of (see `row_statistic`)."""
    if method == "chat_sft":
        return {"logp": np.asarray(scores["logp"], float), "tokens": np.asarray(scores["tokens"], float)}
    a, b = np.asarray(scores["reward_chosen"], float), np.asarray(scores["reward_rejected"], float)
    return {"wins": (a > b) + 0.5 * (a == b)}


def row_statistic(method: str, rows: dict[str, np.ndarray]) -> float:
    """The promotion metric from per-row arrays: perplexity for chat_sft, the win rate for preference."""
    if method == "chat_sft":
        return math.exp(-float(rows["logp"].sum()) / max(float(rows["tokens"].sum()), 1.0))
    return float(rows["wins"].mean())
