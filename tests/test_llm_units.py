"""LLM data handling, validation and promotion as plain functions (no training)."""
from __future__ import annotations

import pandas as pd
import pytest

from llm_fixtures import llm_base, llm_tokenizer  # noqa: F401  (fixtures)
from tuneline.config import ConfigError, load_config
from tuneline.expectations import DataValidationError
from tuneline.llm.config import LLMConfig
from tuneline.llm.data import conversation_problem, last_user_turn, prompt_key, transcript_to_messages


@pytest.mark.unit
def test_hh_transcript_becomes_chat_messages():
    text = "Human: hi there\n\nAssistant: Hello! How can I help?\n\nHuman: tell me a joke\n\nline two\n\nAssistant:"
    assert transcript_to_messages(text) == [
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "tell me a joke\n\nline two"},
    ]
    assert transcript_to_messages("What is 2+2?") == [{"role": "user", "content": "What is 2+2?"}]


@pytest.mark.unit
def test_conversation_problems_are_named():
    ok = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert conversation_problem(ok, needs_final_assistant=True) is None
    assert "last message must be the assistant" in conversation_problem(ok[:1], needs_final_assistant=True)
    assert "must end with a user message" in conversation_problem(ok, needs_final_assistant=False)
    assert "empty content" in conversation_problem([{"role": "user", "content": " "}], needs_final_assistant=False)
    assert "role must be one of" in conversation_problem([{"role": "bot", "content": "x"}], needs_final_assistant=False)
    assert "no user message" in conversation_problem([{"role": "assistant", "content": "x"}], needs_final_assistant=True)


@pytest.mark.unit
def test_prompt_key_ignores_case_and_spacing_but_not_words():
    a = [{"role": "user", "content": "Hello   World"}]
    assert prompt_key(a) == prompt_key([{"role": "user", "content": "hello world"}])
    assert prompt_key(a) != prompt_key([{"role": "user", "content": "hello there"}])
    conv = [{"role": "system", "content": "s"}, {"role": "user", "content": "1"}, {"role": "assistant", "content": "2"},
            {"role": "user", "content": "3"}]
    assert last_user_turn(conv) == [conv[0], conv[3]]


@pytest.mark.unit
def test_llm_params_validate_with_named_keys():
    c = load_config(None, ["task=preference", "llm.preference_method=reward_model"])
    assert c.llm.method(c.task) == "reward_model" and c.llm.model_name(c.task) == "tuneline-reward-model"
    with pytest.raises(ConfigError, match=r"llm\.preference_method[\s\S]*'dpo'[\s\S]*'reward_model'"):
        load_config(None, ["llm.preference_method=ppo"])
    with pytest.raises(ConfigError, match=r"max_prompt_length \(600\) must be below max_length \(512\)"):
        load_config(None, ["llm.max_prompt_length=600"])
    with pytest.raises(ConfigError, match=r"task[\s\S]*'chat_sft'"):
        load_config(None, ["task=dpo"])
    assert LLMConfig().model_name("chat_sft") == "tuneline-chat-sft"


@pytest.mark.unit
def test_promotion_decision_follows_the_metric_direction():
    from tuneline.tracking.gate import decide

    assert decide("preference_accuracy", 0.6, None).promote is True
    assert decide("preference_accuracy", 0.7, 0.6).promote is True  # no p-value: the score rule alone
    assert decide("preference_accuracy", 0.6, 0.6).promote is False  # a tie keeps the champion
    assert decide("preference_accuracy", 0.62, 0.6, min_delta=0.05).promote is False
    assert decide("perplexity", 11.0, 12.0, higher_is_better=False).promote is True  # lower is better
    assert decide("perplexity", 13.0, 12.0, higher_is_better=False).promote is False


@pytest.mark.unit
def test_llm_promotion_needs_a_significant_paired_gain():
    """Per-row wins (preference) and per-row log-probs (perplexity) go through a paired bootstrap:
    a small gain on few rows is refused as not significant, a clear one on many rows passes."""
    import numpy as np

    from tuneline import plugins
    from tuneline.llm.metrics import row_scores, row_statistic

    preference, sft = load_config(None, ["task=preference"]), load_config(None, ["task=chat_sft"])
    rng = np.random.default_rng(0)

    def decide(c, method, _cand_value, _champ_value, candidate, champion):  # the task's gate on the same rows
        keys = list(range(len(next(iter(candidate.values())))))
        return plugins.get(c.task).gate(c, {"keys": keys, "scores": candidate}, {"keys": keys, "scores": champion})

    def pairs(p, n):
        chosen = rng.random(n) < p  # True: the model ranks chosen above rejected on this row
        return {"reward_chosen": np.where(chosen, 1.0, -1.0), "reward_rejected": np.zeros(n)}

    champ, small = pairs(0.5, 40), pairs(0.5, 40)
    small["reward_chosen"][:] = champ["reward_chosen"]
    flipped = np.flatnonzero(small["reward_chosen"] < 0)[:2]
    small["reward_chosen"][flipped] = 1.0  # two more rows right than the champion
    value = lambda s: row_statistic("dpo", row_scores("dpo", s))  # noqa: E731
    d = decide(preference, "dpo", value(small), value(champ), small, champ)
    assert d["delta"] == pytest.approx(2 / 40) and d["test"] == "paired_bootstrap"
    assert d["promote"] is False and d["p_value"] >= 0.05 and "not significant" in d["reason"]

    champ, better = pairs(0.5, 400), pairs(0.8, 400)
    d = decide(preference, "dpo", value(better), value(champ), better, champ)
    assert d["promote"] is True and d["p_value"] < 0.01

    tokens = rng.integers(5, 50, 300).astype(float)
    champ_sft = {"logp": -2.0 * tokens + rng.normal(0, 3, 300), "tokens": tokens}
    better_sft = {"logp": champ_sft["logp"] + 0.3 * tokens, "tokens": tokens}  # 0.3 nats/token better
    ppl = lambda s: row_statistic("chat_sft", row_scores("chat_sft", s))  # noqa: E731
    assert ppl(better_sft) < ppl(champ_sft)
    d = decide(sft, "chat_sft", ppl(better_sft), ppl(champ_sft), better_sft, champ_sft)
    assert d["promote"] is True and d["p_value"] < 0.01
    d = decide(sft, "chat_sft", ppl(champ_sft), ppl(better_sft), champ_sft, better_sft)  # the worse one is refused
    assert d["promote"] is False and d["delta"] > 0


@pytest.mark.data
def test_training_template_renders_like_the_base_and_masks_only_answers(llm_tokenizer):
    from tuneline.engine.chat import training_chat_template

    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"},
            {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "See you"}]
    template = training_chat_template(llm_tokenizer)
    assert template is not None and "{% generation %}" in template
    assert llm_tokenizer.apply_chat_template(conv, tokenize=False, chat_template=template) == \
        llm_tokenizer.apply_chat_template(conv, tokenize=False)
    enc = llm_tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                            chat_template=template)
    masked = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert llm_tokenizer.decode(masked) == "Hello there<|im_end|>See you<|im_end|>"


@pytest.mark.data
def test_long_prompts_keep_their_latest_turns(llm_tokenizer):
    from tuneline.engine.chat import cut_prompt, n_tokens

    turns = []
    for i in range(12):
        turns += [{"role": "user", "content": f"question {i} " + "word " * 20}, {"role": "assistant", "content": "answer " * 20}]
    prompt = turns[:-1]
    cut = cut_prompt(llm_tokenizer, prompt, 120)
    assert n_tokens(llm_tokenizer, cut, generation_prompt=True) <= 120
    assert cut[-1] == prompt[-1] and cut[0]["role"] == "user" and len(cut) < len(prompt)


def _raw(rows: list[dict], name: str = "f.jsonl") -> pd.DataFrame:
    import json

    return pd.DataFrame([{"line": i + 1, "where": f"{name}:{i + 1}", **{k: json.dumps(v) for k, v in r.items()}}
                         for i, r in enumerate(rows)])


@pytest.mark.data
def test_preference_suite_names_field_problem_and_line(llm_tokenizer, tmp_path):
    from tuneline.llm.validation import validate

    rows = [{"prompt": f"Human: q{i}\n\nAssistant:", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(6)]
    rows[2]["rejected"] = rows[2]["chosen"]
    rows[4]["prompt"] = ""
    del rows[5]["chosen"]
    with pytest.raises(DataValidationError) as err:
        validate("preference", LLMConfig(), _raw(rows, "pairs.jsonl"), "pairs.jsonl", llm_tokenizer, tmp_path / "v")
    msg = str(err.value)
    assert "pairs.jsonl (task preference)" in msg
    assert "fields 'chosen' and 'rejected' are identical at pairs.jsonl:3" in msg
    assert "field 'prompt' is empty at pairs.jsonl:5" in msg
    assert "field 'chosen' is missing, null or not text at pairs.jsonl:6" in msg
    import json

    report = json.loads((tmp_path / "v" / "report.json").read_text())
    assert report["success"] is False and (tmp_path / "v" / "report.html").is_file()
    failed = {r["problem"] for r in report["results"] if not r["success"]}
    assert len(failed) == 3, failed


@pytest.mark.data
def test_overlength_share_and_train_test_prompt_overlap(llm_tokenizer, tmp_path):
    from tuneline.llm.validation import validate

    rows = [{"prompt": f"Human: q{i}\n\nAssistant:", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(6)]
    rows[0]["chosen"] = "long " * 200
    raw = _raw(rows)
    assert validate("preference", LLMConfig(max_length=64, max_prompt_length=32, max_overlength_fraction=0.2), raw, "f", llm_tokenizer,
                    tmp_path / "a")["rows"] == 6  # one of six too long: within the allowed 20 %
    with pytest.raises(DataValidationError, match=r"longer than llm.max_length=64 tokens[\s\S]*f.jsonl:1"):
        validate("preference", LLMConfig(max_length=64, max_prompt_length=32, max_overlength_fraction=0.1), raw, "f", llm_tokenizer,
                 tmp_path / "b")
    both = raw.assign(split=["train"] * 4 + ["test"] * 2)
    both.loc[5, "prompt"] = both.loc[1, "prompt"]
    with pytest.raises(DataValidationError, match=r"same prompt is in both[\s\S]*f.jsonl:6"):
        validate("preference", LLMConfig(), both, "f", llm_tokenizer, tmp_path / "c")


@pytest.mark.data
def test_sft_suite_accepts_messages_and_rejects_a_missing_answer(llm_tokenizer, tmp_path):
    from tuneline.llm.validation import validate

    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]} for i in range(5)]
    assert validate("chat_sft", LLMConfig(), _raw(rows), "f", llm_tokenizer, tmp_path / "a")["rows"] == 5
    rows[3]["messages"] = rows[3]["messages"][:1]
    with pytest.raises(DataValidationError, match=r"conversation is not usable at f.jsonl:4[\s\S]*last message must be the assistant"):
        validate("chat_sft", LLMConfig(), _raw(rows), "f", llm_tokenizer, tmp_path / "b")


@pytest.mark.unit
def test_folds_group_pairs_by_prompt():
    from tuneline.llm.plugin import PREFERENCE

    def make_folds(keys, c):
        return PREFERENCE.folds(c, keys)

    keys = [f"p{i % 5}" for i in range(15)]  # 5 prompts, 3 pairs each
    kfold = make_folds(keys, load_config(None, ["task=preference", "llm.cv_mode=kfold", "cv.k=5"]))
    assert len(kfold) == 5 and sorted(i for f in kfold for i in f["val"]) == list(range(15))
    for fold in kfold:
        assert not {keys[i] for i in fold["train"]} & {keys[i] for i in fold["val"]}
    (holdout,) = make_folds(keys, load_config(None, ["task=preference", "llm.holdout_fraction=0.2"]))
    assert len({keys[i] for i in holdout["val"]}) == 1 and not {keys[i] for i in holdout["train"]} & {keys[i] for i in holdout["val"]}
    with pytest.raises(ValueError, match="cv.k=6 but the training data has only 5 distinct prompts"):
        make_folds(keys, load_config(None, ["task=preference", "llm.cv_mode=kfold", "cv.k=6"]))


@pytest.mark.unit
def test_llm_engine_imports_no_mlflow_prefect_or_dvc():
    import subprocess
    import sys

    code = ("import sys\n"
            "import tuneline.engine.lora, tuneline.llm.metrics, tuneline.llm.data, tuneline.llm.evaluation, "
            "tuneline.engine.generation, tuneline.engine.adapters, tuneline.engine.base_model, tuneline.llm.preprocess\n"
            "from trl import DPOTrainer, RewardTrainer, SFTTrainer\n"
            "from tuneline.llm.config import LLMConfig\n"
            "tuneline.engine.lora.lora_config(LLMConfig(), 'reward_model'); tuneline.engine.lora.quantization_config(LLMConfig())\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'prefect', 'dvc')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "[]"
