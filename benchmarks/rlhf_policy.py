"""RLHF on HH-RLHF prompts, CPU: a reward model trained on HH-RLHF pairs, then a GRPO (or RLOO) LoRA
policy on SmolLM2-135M optimised against it; base vs tuned mean reward on held-out prompts (paired
bootstrap interval), KL to the reference, response lengths, and prompts/s.

    nice python -m benchmarks.rlhf_policy [--method grpo] [--reward-pairs 64] [--train-prompts 32] ...

Uses the project's own code (tuneline.engine.lora, tuneline.llm.rl, tuneline.llm.reward) with the
same scoring as the pipeline (llm.score_samples responses of --max-new-tokens sampled at the training
temperature, Monte Carlo KL from sampled ones).
The reward model's own gate (held-out pairwise accuracy significantly above 0.5, exact sign test) is
measured and reported; the pipeline would refuse RL against a reward model that fails it, the
benchmark runs RL anyway so that the figures exist, and says so. Rewrites the `rlhf` section of
BENCHMARKS.md; results also go to benchmarks/results/rlhf_policy.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import ROOT, command_line, rendered_only, stamp, update_section

HH = ROOT.parent / "shared" / "data" / "hh_rlhf_harmless"
RESULTS = ROOT / "benchmarks" / "results" / "rlhf_policy.json"
log = logging.getLogger("benchmarks.rlhf_policy")


def hh_pairs(split: str, n: int, tokenizer, max_prompt_tokens: int, max_chars: int, skip: int = 0) -> list[dict]:
    """The first `n` HH-RLHF rows (after `skip`) with prompt + longer reply under `max_chars`, prompts cut to their latest turns."""
    from tuneline.engine.chat import cut_prompt
    from tuneline.llm.data import to_messages

    rows, skipped = [], skip
    with open(HH / f"{split}.jsonl", encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            if len(r["prompt"]) + max(len(r["chosen"]), len(r["rejected"])) >= max_chars:
                continue
            if skip:
                skip -= 1
                continue
            rows.append({"prompt": cut_prompt(tokenizer, to_messages(r["prompt"]), max_prompt_tokens),
                         "chosen": r["chosen"].strip(), "rejected": r["rejected"].strip()})
            if len(rows) == n:
                break
    if len(rows) < n:  # the HH slice holds few short rows (validation: 39 under 300 characters)
        where = (f"{HH / split}.jsonl has {len(rows)} rows under --max-chars {max_chars}"
                 + (f" after skipping the first {skipped} (the reward model's)" if skipped else ""))
        if not rows:
            raise SystemExit(f"{where}; ask for fewer pairs or prompts, or raise --max-chars")
        log.warning("%s: using those %d of the %d asked for", where, len(rows), n)
    return rows


def render(r: dict) -> str:
    a, t, g, rm = r["args"], r["policy_test"], r["policy_train"], r["reward_model"]
    d = r.get("decoding", {"decoding": "greedy"})  # results written before scoring sampled were greedy
    how = (f"{d['samples']} responses of ≤{a['max_new_tokens']} tokens per prompt sampled at temperature {d['temperature']} "
           f"(seeds {d['seed']}+i, the same for base and tuned), their mean reward" if d["decoding"] == "sampled"
           else f"greedy answers of ≤{a['max_new_tokens']} tokens")
    gate = ("passes" if rm["floor_p_value"] < 0.05 else "does **not** pass") + " the gate"
    refused = "" if rm["floor_p_value"] < 0.05 else (
        " The pipeline (`tuneline run` / `dvc repro` with this reward model) would refuse to start RL against it;"
        " the benchmark runs it anyway so the figures below exist — read them as the behaviour of the loop, not a gain to ship.")
    return f"""## RLHF: reward model → {r['method'].upper()} policy (SmolLM2-135M, HH-RLHF harmless), CPU

{r['stamp']}
- reward model: LoRA reward head on SmolLM2-135M-Instruct, {rm['train_pairs']} HH-RLHF train pairs, {rm['steps']} steps;
  held-out pairwise accuracy {rm['pairwise_accuracy']:.4f} on {rm['test_pairs']} validation pairs, exact one-sided sign test
  p={rm['floor_p_value']:.4g}: it {gate} (alpha 0.05).{refused}
- policy: {r['method']} (trl {r['trl']}), LoRA r=8 on q_proj/v_proj, beta (KL weight) {a['beta']}, lr {a['learning_rate']},
  {a['num_generations']} completions of ≤{a['completion_tokens']} tokens per prompt, batch {a['batch_size']} completions,
  {r['train']['steps']} steps on {a['train_prompts']} HH train prompts; {r['train']['train_seconds']:.0f} s of training,
  **{r['train']['train_prompts_per_second']:.3f} prompts/s** (each prompt: {a['num_generations']} sampled completions, their rewards,
  policy and reference log-probs, one update).
- scoring: {how}, scored by the reward model; KL(π‖π_ref) by Monte Carlo: one
  response sampled from the policy per prompt (temperature 1, seed {a['seed']}), mean of log π − log π_ref over its tokens summed
  (nats per response; one sample per prompt is unbiased but noisy, and can come out below 0 where the
  true KL cannot); intervals: 95% paired bootstrap over prompts ({a['bootstrap']} resamples).
  Held-out scoring ran at {r['scoring_prompts_per_second']:.2f} prompts/s (base + tuned answers, KL sample, rewards).

| prompts | n | base mean reward | tuned mean reward | gain (95% CI) | one-sided p | KL to ref (nats/response, /token) | mean tokens base → tuned | reward/token base → tuned |
|---|---|---|---|---|---|---|---|---|
| held-out (HH validation) | {t['prompts']:.0f} | {t['base_mean_reward']:.4f} | {t['mean_reward']:.4f} | {t['reward_gain']:+.4f} ({t['reward_gain_ci95_low']:+.4f}, {t['reward_gain_ci95_high']:+.4f}) | {t['reward_gain_p_value']:.3f} | {t['kl_to_reference']:.4f}, {t['kl_per_token']:.4f} | {t['base_mean_response_tokens']:.1f} → {t['mean_response_tokens']:.1f} | {t['base_reward_per_token']:.4f} → {t['reward_per_token']:.4f} |
| its own training prompts | {g['prompts']:.0f} | {g['base_mean_reward']:.4f} | {g['mean_reward']:.4f} | {g['reward_gain']:+.4f} ({g['reward_gain_ci95_low']:+.4f}, {g['reward_gain_ci95_high']:+.4f}) | {g['reward_gain_p_value']:.3f} | — | {g['base_mean_response_tokens']:.1f} → {g['mean_response_tokens']:.1f} | {g['base_reward_per_token']:.4f} → {g['reward_per_token']:.4f} |

GPU: not measured. The GPU machine's carry limit is 64 MiB and the SmolLM2 GGUF the base is converted from is
94 MB, and that machine's image has no trl (GRPOTrainer/RLOOTrainer), so this loop cannot run there as shipped.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", choices=["grpo", "rloo"], default="grpo")
    ap.add_argument("--reward-pairs", type=int, default=32)
    ap.add_argument("--reward-test-pairs", type=int, default=32)
    ap.add_argument("--reward-steps", type=int, default=4)
    ap.add_argument("--max-chars", type=int, default=300, help="HH rows whose prompt + longer reply is shorter than this")
    ap.add_argument("--train-prompts", type=int, default=8)
    ap.add_argument("--test-prompts", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=4, help="completions per step")
    ap.add_argument("--num-generations", type=int, default=2)
    ap.add_argument("--completion-tokens", type=int, default=12)
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--learning-rate", type=float, default=2e-3)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--render-only", action="store_true", help="rewrite the section from benchmarks/results/rlhf_policy.json")
    args = ap.parse_args(argv)
    if rendered_only(args, "rlhf", render, RESULTS):
        return 0
    if not HH.is_dir():
        sys.exit(f"{HH} is absent: the shared HH-RLHF sample sits beside the repo on the build machines")
    from importlib.metadata import version

    from transformers import AutoTokenizer

    from tuneline.engine.base_model import resolve_base
    from tuneline.engine.lora import train_adapter
    from tuneline.llm import rl
    from tuneline.llm.config import PACKAGED_BASE, LLMConfig
    from tuneline.llm.evaluation import evaluate_adapter
    from tuneline.llm.metrics import row_scores
    from tuneline.llm.reward import RewardScorer
    from tuneline.storage import path_digest
    from tuneline.tracking.gate import pairwise_floor

    base = resolve_base(PACKAGED_BASE)
    tokenizer = AutoTokenizer.from_pretrained(base.folder)
    rm_pairs = hh_pairs("train", args.reward_pairs, tokenizer, 96, args.max_chars)
    rm_test = hh_pairs("validation", args.reward_test_pairs, tokenizer, 96, args.max_chars)
    prompts_train = rl.prompts_of(hh_pairs("train", args.train_prompts, tokenizer, 96, args.max_chars, skip=args.reward_pairs))
    prompts_test = rl.prompts_of(hh_pairs("validation", args.test_prompts, tokenizer, 96, args.max_chars, skip=args.reward_test_pairs))
    rm_cfg = LLMConfig(preference_method="reward_model", max_length=256, max_prompt_length=96, batch_size=8,
                       max_steps=args.reward_steps, learning_rate=3e-3, eval_batch_size=16)
    cfg = LLMConfig(preference_method=args.method, max_length=256, max_prompt_length=96, batch_size=args.batch_size,
                    epochs=args.epochs, learning_rate=args.learning_rate, beta=args.beta, rl_num_generations=args.num_generations,
                    rl_max_completion_length=args.completion_tokens, score_max_new_tokens=args.max_new_tokens,
                    eval_batch_size=8, seed=args.seed)
    meta = {"task": "preference", "base": base.ref}
    with tempfile.TemporaryDirectory(prefix="tuneline-bench-rlhf-") as tmp:
        rm_dir, policy_dir = Path(tmp) / "reward_model", Path(tmp) / "policy"
        rm_stats = train_adapter("reward_model", base.folder, rm_pairs, rm_cfg, rm_dir, meta)
        ev = evaluate_adapter(rm_dir, base.folder, rm_test, rm_cfg.eval_batch_size)
        floor = pairwise_floor(row_scores("reward_model", ev["scores"])["wins"])
        log.info("reward model: accuracy %.4f, sign test p=%.4g", ev["metrics"]["pairwise_accuracy"], floor.p_value)
        ref = {"folder": str(rm_dir), "sha256": path_digest(rm_dir)}
        scorer = RewardScorer(ref, cfg.eval_batch_size)
        train = rl.train_policy(args.method, base.folder, [{"prompt": p} for p in prompts_train], cfg, policy_dir, meta | {"beta": cfg.beta}, scorer)
        start = time.perf_counter()
        test = rl.score_policy(policy_dir, base.folder, prompts_test, scorer, cfg)
        score_seconds = time.perf_counter() - start
        own = rl.score_policy(policy_dir, base.folder, prompts_train, scorer, cfg, kl=False)
        history = rl.history_stats(policy_dir)
    result = {"method": args.method, "args": vars(args), "trl": version("trl"), "train": train | history, "decoding": rl.decoding(cfg),
              "reward_model": {"train_pairs": len(rm_pairs), "test_pairs": len(rm_test), "steps": rm_stats["steps"],
                               "pairwise_accuracy": ev["metrics"]["pairwise_accuracy"], "floor_p_value": floor.p_value},
              "policy_test": rl.policy_metrics(test, args.bootstrap, args.seed),
              "policy_train": rl.policy_metrics(own, args.bootstrap, args.seed),
              "scoring_prompts_per_second": len(prompts_test) / score_seconds,
              "examples": rl.generations_table(prompts_test[:3], {k: v[:3] for k, v in test.items()})}
    result["stamp"] = stamp(command_line())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, default=float) + "\n", encoding="utf-8")
    update_section("rlhf", render(result))
    log.info("wrote the rlhf section of BENCHMARKS.md: %s", json.dumps(result["policy_test"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
