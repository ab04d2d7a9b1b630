#!/usr/bin/env bash
# RLHF on the tests' synthetic polite/rude preference set: a reward model through `tuneline run` (it
# passes its own floor and becomes champion), then GRPO against that champion with more steps than the
# smoke test, by the functions the pipeline's refit step runs (rl.train_policy, rl.score_policy,
# rl.policy_metrics) without its cross-validation fold, which doubles the cost: does the policy's reward
# on its own training prompts rise? Each GRPO step sees 4 prompts x 2 completions (batch 8); scoring
# samples llm.score_samples responses per prompt at the training temperature. Prints base -> tuned
# mean reward with the paired bootstrap interval, KL, and trl's logged per-step reward (first vs last).
# Usage: bash benchmarks/rlhf_synthetic.sh [WORKDIR] [STEPS]   (a rerun on the same WORKDIR reuses its reward model)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-$(mktemp -d -t tuneline-rlhf-synthetic-XXXX)}"
mkdir -p "$WORK/proj" && cd "$WORK"
export HF_HUB_OFFLINE=1
python - "$REPO" <<'PY'
import sys; sys.path.insert(0, f"{sys.argv[1]}/tests")
from pathlib import Path
from llm_fixtures import polite_rude_pairs, write_jsonl
write_jsonl(Path("rm_train.jsonl"), polite_rude_pairs(16)); write_jsonl(Path("rm_test.jsonl"), polite_rude_pairs(12, skip=16))
write_jsonl(Path("rl_train.jsonl"), polite_rude_pairs(8, skip=28)); write_jsonl(Path("rl_test.jsonl"), polite_rude_pairs(8, skip=36))
PY
COMMON=(--set llm.max_length=128 --set llm.max_prompt_length=64 --set llm.cv_mode=holdout --set llm.holdout_fraction=0.25)
if [ ! -f rm.done ]; then
(cd proj && tuneline run --set task=preference --set llm.preference_method=reward_model "${COMMON[@]}" \
  --set llm.batch_size=8 --set llm.max_steps=4 --set llm.learning_rate=0.003 --set llm.eval_batch_size=16 \
  --set "data.source=$WORK/rm_train.jsonl" --set "data.test_source=$WORK/rm_test.jsonl") > rm.log 2>&1
touch rm.done
fi
python - "$WORK" "${2:-8}" <<'PY'
import json, sys, time
from pathlib import Path
import numpy as np
from tuneline.engine.adapters import read_meta
from tuneline.engine.base_model import resolve_base
from tuneline.llm import rl
from tuneline.llm.config import PACKAGED_BASE, LLMConfig
from tuneline.llm.reward import RewardScorer, resolve
work, steps = Path(sys.argv[1]), int(sys.argv[2])
prompts = {s: [[{"role": "user", "content": json.loads(l)["prompt"]}] for l in (work / f"rl_{s}.jsonl").read_text().splitlines()]
           for s in ("train", "test")}
ref = resolve("models:/tuneline-reward-model@champion", f"sqlite:///{work / 'proj/mlflow.db'}", list, 0.05, 16)
print(f"reward model v{ref['version']}: held-out pairwise accuracy {ref['pairwise_accuracy']}")
cfg = LLMConfig(preference_method="grpo", max_length=128, max_prompt_length=64, batch_size=8, max_steps=steps, learning_rate=0.003,
                rl_num_generations=2, rl_max_completion_length=8, score_max_new_tokens=8, score_samples=4, eval_batch_size=16)
base, scorer, policy = resolve_base(PACKAGED_BASE), RewardScorer(ref, cfg.eval_batch_size), work / "policy"
stats = rl.train_policy("grpo", base.folder, [{"prompt": p} for p in prompts["train"]], cfg, policy, {"task": "preference", "base": base.ref}, scorer)
print(f"grpo: {stats['steps']} steps, {stats['train_seconds']:.0f} s, {stats['train_prompts_per_second']:.3f} prompts/s; scoring: {rl.decoding(cfg)}")
start = time.perf_counter()
for split, kl in (("train", False), ("test", True)):
    m = rl.policy_metrics(rl.score_policy(policy, base.folder, prompts[split], scorer, cfg, kl=kl), 2000, 42)
    print(f"{split} ({m['prompts']:.0f} prompts): base {m['base_mean_reward']:.3f} -> tuned {m['mean_reward']:.3f}, gain "
          f"{m['reward_gain']:+.3f} (95% CI {m['reward_gain_ci95_low']:+.3f}, {m['reward_gain_ci95_high']:+.3f}), one-sided p "
          f"{m['reward_gain_p_value']:.3f}; tokens {m['base_mean_response_tokens']:.1f} -> {m['mean_response_tokens']:.1f}"
          + (f"; KL to reference {m['kl_to_reference']:.3f} nats/response ({m['kl_per_token']:.4f}/token)" if kl else ""))
print(f"scoring: {time.perf_counter() - start:.0f} s; trl k3 KL while training (mean): {rl.history_stats(policy).get('train_kl_k3', float('nan')):.4f}/token")
rewards = [h["reward"] for h in read_meta(policy)["history"] if "reward" in h]
k = max(1, len(rewards) // 4)
print(f"trl's sampled reward per step ({len(rewards)} steps): first {k} mean {np.mean(rewards[:k]):.3f} -> last {k} mean "
      f"{np.mean(rewards[-k:]):.3f}; all: " + " ".join(f"{r:.2f}" for r in rewards))
PY
