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

from tuneline.engine import chat


def token_logps(model, seqs: list[list[int]], masks: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Per sequence: sum of log p(token | earlier) over masked tokens, and how many there were.

    Sequences are left-padded (explicit position ids, so the result does not depend on padding) and
    the vocabulary projection runs only over the tail that holds masked tokens: for preference
    pairs the reply, a fraction of prompt + reply.
    """
    import torch

    from torch.nn.utils.rnn import pad_sequence

    def left_pad(rows: list[list[int]], value: int = 0, dtype=torch.long):
        rows = [torch.tensor(r, dtype=dtype) for r in rows]
        return pad_sequence(rows, batch_first=True, padding_value=value, padding_side="left")

    ids, attn, mask = left_pad(seqs, pad_id), left_pad([[1] * len(s) for s in seqs]), left_pad(masks, dtype=torch.bool)
    width = ids.shape[1]
    first = int(mask.any(0).int().argmax()) if mask.any() else width  # the earliest column holding a masked token
    keep = min(max(2, width - first + 1), width)
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    dev = next(model.parameters()).device
    ids, attn, mask, positions = ids.to(dev), attn.to(dev), mask.to(dev), positions.to(dev)
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=attn, position_ids=positions, logits_to_keep=keep).logits[:, :-1].float()
        target = ids[:, width - keep + 1:]
        logp = torch.log_softmax(logits, dim=-1).gather(-1, target[..., None]).squeeze(-1)
        m = mask[:, width - keep + 1:]
        return (logp * m).sum(-1).cpu().numpy(), m.sum(-1).cpu().numpy()


def _length_batches(seqs: list[list[int]], size: int, desc: str):
    """Index batches of similar length (little padding), shortest first, with a progress bar."""
    from tuneline.engine.batching import LengthGroupedBatches

    batches = LengthGroupedBatches([len(s) for s in seqs], size, seed=0, shuffle=False)
    return tqdm(batches, desc=desc, unit="batch", leave=False)


def _by_length(seqs: list[list[int]], masks: list[list[int]], model, pad_id: int, size: int, desc: str):
    """token_logps over batches of similar length, returned in the original order."""
    lp, n = np.zeros(len(seqs)), np.zeros(len(seqs))
    for batch in _length_batches(seqs, size, desc):
        lp[batch], n[batch] = token_logps(model, [seqs[i] for i in batch], [masks[i] for i in batch], pad_id)
    return lp, n


def response_logps(model, tokenizer, prompts: list, responses: list[str], batch_size: int, desc: str) -> np.ndarray:
    """Summed log-prob of each response after its prompt (the tokens past the rendered prompt, as trl cuts them)."""
    seqs, masks = [], []
    for p, r in zip(prompts, responses):
        head = tokenizer.apply_chat_template(p, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
        full = tokenizer.apply_chat_template(p + [{"role": "assistant", "content": r}], tokenize=True, return_dict=True)["input_ids"]
        cut = next((i for i, (x, y) in enumerate(zip(head, full)) if x != y), min(len(head), len(full)))
        seqs.append(full)
        masks.append([0] * cut + [1] * (len(full) - cut))
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


def _wins(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row: 1 where a > b, 0.5 on a tie, else 0."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return (a > b) + 0.5 * (a == b)


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else float("nan")


def _reward_metrics(scores: dict[str, np.ndarray], accuracy: str) -> dict[str, float]:
    """The share of pairs whose chosen reply has the higher reward (`accuracy`), the mean margin, the count."""
    chosen, rejected = scores["reward_chosen"], scores["reward_rejected"]
    return {accuracy: _mean(_wins(chosen, rejected)), "mean_margin": _mean(chosen - rejected),
            "pairs": float(len(chosen))}


def preference_metrics(scores: dict[str, np.ndarray]) -> dict[str, float]:
    return _reward_metrics(scores, "preference_accuracy") | {
        "policy_logp_accuracy": _mean(_wins(scores["policy_chosen"], scores["policy_rejected"])),
        "reference_logp_accuracy": _mean(_wins(scores["reference_chosen"], scores["reference_rejected"])),
    }


def rewards(model, tokenizer, prompts: list, responses: list[str], batch_size: int,
            desc: str = "scoring rewards") -> np.ndarray:
    """The reward head's score of each prompt + response, rendered as the RewardTrainer does."""
    import torch

    from tuneline.engine.batching import make_collate

    dev, collate = next(model.parameters()).device, make_collate(tokenizer.pad_token_id)
    seqs = [tokenizer.apply_chat_template(p + [{"role": "assistant", "content": r}], tokenize=True,
                                          return_dict=True)["input_ids"] for p, r in zip(prompts, responses)]
    values = np.zeros(len(seqs))
    for batch in _length_batches(seqs, batch_size, desc):
        enc = {k: v.to(dev) for k, v in collate([{"input_ids": seqs[i]} for i in batch]).items()}
        with torch.no_grad():
            values[batch] = model(**enc).logits[:, 0].float().cpu().numpy()
    return values


def reward_scores(model, tokenizer, pairs: list[dict], batch_size: int) -> dict[str, np.ndarray]:
    """The rewards of prompt+chosen and prompt+rejected."""
    prompts = [p["prompt"] for p in pairs]
    return {f"reward_{side}": rewards(model, tokenizer, prompts, [p[side] for p in pairs], batch_size,
                                      f"scoring rewards {side}") for side in ("chosen", "rejected")}


def reward_metrics(scores: dict[str, np.ndarray]) -> dict[str, float]:
    return _reward_metrics(scores, "pairwise_accuracy")


def sft_scores(model, tokenizer, conversations: list[list[dict]], batch_size: int) -> dict[str, np.ndarray]:
    """Per conversation: summed log-prob of its assistant tokens (those inside {% generation %}) and their count."""
    template = chat.training_chat_template(tokenizer) or tokenizer.chat_template
    encs = [tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                          chat_template=template) for conv in conversations]
    seqs, masks = [list(e["input_ids"]) for e in encs], [list(e["assistant_masks"]) for e in encs]
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
    if method in ("grpo", "rloo"):  # a policy: the reward model's score of its answer to each held-out prompt
        return {"reward": np.asarray(scores["reward"], float)}
    return {"wins": _wins(scores["reward_chosen"], scores["reward_rejected"])}


def row_statistic(method: str, rows: dict[str, np.ndarray]) -> float:
    """The promotion metric from per-row arrays: perplexity for chat_sft, the mean reward for a policy,
    the win rate for the other preference methods."""
    if method == "chat_sft":
        return math.exp(-float(rows["logp"].sum()) / max(float(rows["tokens"].sum()), 1.0))
    return float(rows["reward" if "reward" in rows else "wins"].mean())
