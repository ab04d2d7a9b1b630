"""A policy optimised against a reward model (llm.preference_method grpo or rloo): training, and
scoring a policy on prompts with the fixed decoding of params.yaml.

What the guide calls PPO maps to trl's GRPOTrainer: trl 1.16 has no PPOTrainer; GRPO keeps PPO's
clipped surrogate objective and replaces the value model by the mean reward of a group of completions
of the same prompt. RLOO is the REINFORCE form with a leave-one-out baseline. Both keep a KL penalty
to the reference (llm.beta > 0), the base with the adapter disabled.

Scoring (held-out prompts, training prompts, a champion's re-score): llm.score_samples responses of at
most llm.score_max_new_tokens tokens per prompt, sampled at llm.rl_temperature (the distribution the
policy was trained on) from seeds llm.seed+i, the same seeds for the policy and the base (paired); a
prompt's reward and length are the means over its responses. llm.score_samples 0: one greedy answer.
KL(policy || reference) is estimated by Monte Carlo: llm.kl_samples responses sampled from the policy
(temperature 1, no top-k/top-p, seed llm.seed) per prompt, and the mean over them of
log pi(y|x) - log pi_ref(y|x) summed over the response's tokens (nats per response, the k1 estimator,
unbiased for the sequence-level KL); divided by the response's tokens for a per-token figure.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)

def decoding(cfg) -> dict:
    """The decoding that scores a policy, as recorded on the run and the version."""
    sampled = cfg.score_samples > 0
    return {"decoding": "sampled" if sampled else "greedy", "samples": cfg.score_samples if sampled else 1,
            "temperature": cfg.rl_temperature if sampled else 0.0, "seed": cfg.seed,
            "max_new_tokens": cfg.score_max_new_tokens, "kl_samples": cfg.kl_samples,
            "kl_sampling": "temperature 1, no top-k/top-p", "kl_seed": cfg.seed}


def train_policy(method: str, base_folder: str, rows: list, cfg, adapter_dir: Path, meta: dict, scorer) -> dict:
    """LoRA policy trained by GRPO/RLOO on the rows' prompts against `scorer` (tuneline.llm.reward.RewardScorer);
    training statistics with prompts/s."""
    from tuneline.engine.lora import train_adapter

    stats = train_adapter(method, base_folder, rows, cfg, adapter_dir, meta, reward_funcs=scorer)
    prompts = stats["steps"] * cfg.batch_size * cfg.grad_accum / cfg.rl_num_generations
    stats["train_prompts_per_second"] = prompts / max(stats["train_seconds"], 1e-9)
    return stats


def history_stats(adapter_dir: Path) -> dict[str, float]:
    """Means over the training log: trl's KL estimate (k3, per token) and the sampled completions' reward."""
    from tuneline.engine.adapters import read_meta

    history = read_meta(adapter_dir).get("history", [])
    out = {}
    for key, name in (("kl", "train_kl_k3"), ("reward", "train_sampled_reward")):
        values = [h[key] for h in history if key in h]
        if values:
            out[name] = float(np.mean(values))
    return out


def _tokens(tokenizer, responses: list[str]) -> np.ndarray:
    return np.array([len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in responses], float)


def responses(model, tokenizer, prompts: list, cfg, desc: str) -> list[list[str]]:
    """The scoring decoding's responses: llm.score_samples lists (sample i from seed llm.seed+i at
    llm.rl_temperature), or one list of greedy answers when it is 0."""
    from tuneline.engine.generation import generate

    size, n = cfg.eval_batch_size, cfg.score_max_new_tokens
    if not cfg.score_samples:
        return [generate(model, tokenizer, prompts, n, batch_size=size, desc=desc)]
    return [generate(model, tokenizer, prompts, n, batch_size=size, desc=f"{desc} {i + 1}/{cfg.score_samples}",
                     sample_seed=cfg.seed + i, temperature=cfg.rl_temperature) for i in range(cfg.score_samples)]


def score_policy(adapter_dir: Path, base_folder: str, prompts: list, scorer, cfg, with_base: bool = True,
                 kl: bool = True) -> dict:
    """Per prompt: the policy's first response, its reward and length averaged over the scoring decoding's
    responses (`responses`); the same for the base (adapter disabled) with `with_base`; the Monte Carlo
    KL to the base with `kl` (module docstring)."""
    from tuneline.engine.adapters import load_adapter
    from tuneline.engine.generation import generate
    from tuneline.llm.metrics import response_logps

    model, tokenizer, _ = load_adapter(adapter_dir, base_folder)
    size, n = cfg.eval_batch_size, cfg.score_max_new_tokens
    answers = {"": responses(model, tokenizer, prompts, cfg, "policy answers")}
    if with_base:
        with model.disable_adapter():
            answers["base_"] = responses(model, tokenizer, prompts, cfg, "base answers")
    out: dict = {}
    if kl:
        per_seq, per_tok = np.zeros(len(prompts)), np.zeros(len(prompts))
        for i in range(cfg.kl_samples):
            sampled = generate(model, tokenizer, prompts, n, batch_size=size, desc="sampling for KL", sample_seed=cfg.seed + i)
            policy = response_logps(model, tokenizer, prompts, sampled, size, "policy log-probs")
            with model.disable_adapter():
                reference = response_logps(model, tokenizer, prompts, sampled, size, "reference log-probs")
            per_seq += (policy - reference) / cfg.kl_samples
            per_tok += (policy - reference) / np.maximum(_tokens(tokenizer, sampled), 1) / cfg.kl_samples
        out |= {"kl": per_seq, "kl_per_token": per_tok}
    for prefix, samples in answers.items():
        out[f"{prefix}response"] = samples[0]
        out[f"{prefix}reward"] = sample_means(scorer.score, prompts, samples)
        out[f"{prefix}tokens"] = sample_means(lambda _, texts: _tokens(tokenizer, texts), prompts, samples)
    return out


def sample_means(measure, prompts: list, samples: list[list[str]]) -> np.ndarray:
    """Per prompt, the mean over the samples (lists of one response per prompt) of measure(prompts, responses),
    measured in one call."""
    flat = [r for s in samples for r in s]
    return np.asarray(measure(prompts * len(samples), flat), float).reshape(len(samples), len(prompts)).mean(0)


def _mean(rows: dict) -> float:
    return float(np.mean(rows["reward"]))


def policy_metrics(scores: dict, samples: int, seed: int) -> dict[str, float]:
    """Mean reward of the policy and of the base on the same prompts, the paired gain with its bootstrap
    interval and one-sided p, KL, response lengths and length-normalised rewards (reward / tokens)."""
    from tuneline.tracking.gate import paired_bootstrap

    tuned, out = {"reward": np.asarray(scores["reward"], float)}, {}
    out |= {"mean_reward": _mean(tuned), "mean_response_tokens": float(np.mean(scores["tokens"])),
            "reward_per_token": float(np.mean(tuned["reward"] / np.maximum(scores["tokens"], 1))), "prompts": float(len(tuned["reward"]))}
    if "base_reward" in scores:
        base = {"reward": np.asarray(scores["base_reward"], float)}
        p_value, low, high = paired_bootstrap(_mean, tuned, base, True, samples, seed)
        out |= {"base_mean_reward": _mean(base), "reward_gain": _mean(tuned) - _mean(base), "reward_gain_ci95_low": low,
                "reward_gain_ci95_high": high, "reward_gain_p_value": p_value,
                "base_mean_response_tokens": float(np.mean(scores["base_tokens"])),
                "base_reward_per_token": float(np.mean(base["reward"] / np.maximum(scores["base_tokens"], 1)))}
    if "kl" in scores:
        out |= {"kl_to_reference": float(np.mean(scores["kl"])), "kl_per_token": float(np.mean(scores["kl_per_token"]))}
    return out


def base_floor(scores: dict, samples: int, seed: int):
    """The floor a policy must clear to be promoted: the base model's mean reward on the same prompts,
    by the one-sided paired bootstrap (tracking.gate.Floor)."""
    from tuneline.tracking.gate import Floor, paired_bootstrap

    tuned, base = {"reward": np.asarray(scores["reward"], float)}, {"reward": np.asarray(scores["base_reward"], float)}
    return Floor(_mean(base), paired_bootstrap(_mean, tuned, base, True, samples, seed)[0], "paired_bootstrap", "the base model")


def generations_table(prompts: list, scores: dict) -> list[dict]:
    """Base vs tuned answers to the held-out prompts (the first of each prompt's scoring responses), with
    the prompt's rewards (the means over its responses), for people to read."""
    def text(p):
        return p if isinstance(p, str) else "\n".join(f"{m['role']}: {m['content']}" for m in p)

    return [{"prompt": text(p), "answer": a, "base_answer": b, "reward": float(r), "base_reward": float(br)}
            for p, a, b, r, br in zip(prompts, scores["response"], scores["base_response"], scores["reward"], scores["base_reward"])]


def prompts_of(rows: list, limit: Optional[int] = None) -> list:
    return [r["prompt"] for r in rows[:limit]]
