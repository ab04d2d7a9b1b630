#!/usr/bin/env bash
# The RLHF loop through `tuneline run` on the tests' synthetic polite/rude preference set (a reward
# model that passes its own floor), then GRPO against its champion with more steps than the smoke
# test: does the policy's reward on its own training prompts rise? Each GRPO step sees 4 prompts x 2
# completions (batch 8), 12 steps over 12 training prompts; scoring samples 4 responses per prompt
# (llm.score_samples, at the training temperature). Reads the figures off the runs, and trl's logged
# per-step reward of the sampled completions (first vs last steps).
# Usage: bash benchmarks/rlhf_synthetic.sh [WORKDIR]   (rerun on the same WORKDIR: its reward model is reused)
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
write_jsonl(Path("rl_train.jsonl"), polite_rude_pairs(12, skip=28)); write_jsonl(Path("rl_test.jsonl"), polite_rude_pairs(12, skip=40))
PY
COMMON=(--set llm.max_length=128 --set llm.max_prompt_length=64 --set llm.cv_mode=holdout --set llm.holdout_fraction=0.25)
if [ ! -f rm.done ]; then
(cd proj && tuneline run --set task=preference --set llm.preference_method=reward_model "${COMMON[@]}" \
  --set llm.batch_size=8 --set llm.max_steps=4 --set llm.learning_rate=0.003 --set llm.eval_batch_size=16 \
  --set "data.source=$WORK/rm_train.jsonl" --set "data.test_source=$WORK/rm_test.jsonl") > rm.log 2>&1
touch rm.done
fi
(cd proj && tuneline run --set task=preference --set llm.preference_method=grpo "${COMMON[@]}" \
  --set "llm.reward_model=models:/tuneline-reward-model@champion" \
  --set llm.batch_size=8 --set llm.max_steps=12 --set llm.learning_rate=0.003 --set llm.rl_num_generations=2 \
  --set llm.rl_max_completion_length=12 --set llm.score_max_new_tokens=12 --set llm.score_samples=4 --set llm.eval_batch_size=16 \
  --set "data.source=$WORK/rl_train.jsonl" --set "data.test_source=$WORK/rl_test.jsonl") > rl.log 2>&1
python - "$WORK/proj" <<'PY'
import json, sys
from pathlib import Path
from mlflow import MlflowClient
root = Path(sys.argv[1])
reg = json.loads((root / "data/registry/registration.json").read_text())
m = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}").get_run(reg["run_id"]).data.metrics
for split in ("train", "test"):
    print(f"{split}: base {m[f'{split}_base_mean_reward']:.3f} -> tuned {m[f'{split}_mean_reward']:.3f}, gain "
          f"{m[f'{split}_reward_gain']:+.3f} ({m[f'{split}_reward_gain_ci95_low']:+.3f}, {m[f'{split}_reward_gain_ci95_high']:+.3f})")
print(f"KL to reference {m['test_kl_to_reference']:.3f} nats/response; trl k3 KL while training {m['train_kl_k3']:.4f}/token")
from tuneline.engine.adapters import read_meta
rewards = [h["reward"] for h in read_meta(root / "models/model")["history"] if "reward" in h]
k = max(1, len(rewards) // 4)
print(f"trl's sampled reward per step ({len(rewards)} steps): first {k} mean {sum(rewards[:k]) / k:.3f} -> last {k} mean "
      f"{sum(rewards[-k:]) / k:.3f}; all: " + " ".join(f"{r:.2f}" for r in rewards))
d = json.loads((root / "data/registry/promotion.json").read_text())
print(f"promoted: {d['promote']} ({d.get('reason', '')})")
PY
