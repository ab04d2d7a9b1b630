"""RLHF pieces that train no model: the significance floor of the shared gate, the policy metrics, the
reward-model check's messages, the config rule, the DAG and the flow's choice of reward model."""
from __future__ import annotations

import numpy as np
import pytest

from llm_fixtures import llm_base, llm_tokenizer, write_jsonl  # noqa: F401  (fixtures)



@pytest.mark.unit
def test_the_pairwise_floor_is_an_exact_one_sided_sign_test():
    from tuneline.tracking.gate import pairwise_floor

    assert pairwise_floor(np.ones(3)).p_value == pytest.approx(0.125)  # 3 of 3 right is not yet significant
    assert pairwise_floor(np.ones(12)).p_value == pytest.approx(0.5 ** 12)
    assert pairwise_floor(np.array([1, 1, 0, 0.5, 0.5])).p_value == pytest.approx(0.5)  # ties are dropped
    assert pairwise_floor(np.full(4, 0.5)).p_value == 1.0


@pytest.mark.unit
def test_the_floor_refuses_a_first_model_that_is_not_significantly_above_it():
    from tuneline.tracking.gate import Floor, pairwise_floor, paired_rows_gate

    stat = lambda rows: float(rows["wins"].mean())  # noqa: E731
    kwargs = dict(higher_is_better=True, min_delta=0.0, alpha=0.05, samples=200, seed=0)
    weak = {"wins": np.array([1, 1, 1, 0, 1, 0, 1, 0.0])}
    d = paired_rows_gate("pairwise_accuracy", stat, weak, None, floor=pairwise_floor(weak["wins"]), **kwargs)
    assert d["promote"] is False and d["above_floor"] is False and d["floor_test"] == "sign_test_exact"
    assert d["reason"].startswith("pairwise_accuracy 0.6250 is not significantly above chance (0.5000)")
    strong = {"wins": np.ones(10)}
    assert paired_rows_gate("pairwise_accuracy", stat, strong, None, floor=pairwise_floor(strong["wins"]), **kwargs)["promote"] is True
    # with a champion too: a candidate that beats the champion but not the floor stays out
    d = paired_rows_gate("mean_reward", lambda r: float(r["wins"].mean()), strong, {"wins": np.zeros(10)},
                         floor=Floor(0.5, 0.3, "paired_bootstrap", "the base model"), **kwargs)
    assert d["promote"] is False and "not significantly above the base model" in d["reason"]
    assert paired_rows_gate("x", stat, weak, None, **kwargs)["promote"] is True  # a task without a floor: as before


@pytest.mark.unit
def test_the_floor_is_recorded_on_the_version_as_tags():
    from tuneline.tracking.gate import apply_floor, decide, pairwise_floor
    from tuneline.tracking.promotion import floor_tags

    d = apply_floor(decide("pairwise_accuracy", 0.9, None).to_dict(), pairwise_floor(np.r_[np.ones(9), 0]), 0.05)
    tags = floor_tags(d)
    assert tags["gate.above_floor"] == "true" and tags["gate.floor_test"] == "sign_test_exact"
    assert float(tags["gate.floor_p_value"]) == pytest.approx(11 / 1024, rel=1e-4) and tags["gate.value"] == "0.900000"
    assert floor_tags(decide("perplexity", 3.0, None).to_dict()) == {}


@pytest.mark.unit
def test_policy_metrics_pair_the_tuned_and_base_rewards_over_prompts():
    from tuneline.llm.rl import base_floor, policy_metrics

    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, 40)
    scores = {"reward": base + 1.0, "base_reward": base, "tokens": np.full(40, 4.0), "base_tokens": np.full(40, 8.0),
              "kl": np.full(40, 0.2), "kl_per_token": np.full(40, 0.05)}
    m = policy_metrics(scores, 500, 0)
    assert m["reward_gain"] == pytest.approx(1.0) and m["reward_gain_ci95_low"] == pytest.approx(1.0)  # the same shift on every prompt
    assert m["reward_gain_p_value"] < 0.01 and m["kl_to_reference"] == pytest.approx(0.2)
    assert m["reward_per_token"] == pytest.approx(np.mean((base + 1) / 4)) and m["base_mean_response_tokens"] == 8
    noisy = dict(scores, reward=base + rng.normal(0, 1, 40))
    m = policy_metrics(noisy, 500, 0)
    assert m["reward_gain_ci95_low"] < m["reward_gain"] < m["reward_gain_ci95_high"]
    floor = base_floor(scores, 500, 0)
    assert floor.value == pytest.approx(base.mean()) and floor.p_value < 0.01 and floor.what == "the base model"


@pytest.mark.unit
def test_scoring_averages_each_prompts_sampled_responses_and_records_its_decoding():
    from tuneline.config import ConfigError, load_config
    from tuneline.llm.rl import decoding, sample_means

    # sample-major lists of one response per prompt; the measure sees each response with its own prompt
    means = sample_means(lambda ps, rs: [len(p) + len(r) for p, r in zip(ps, rs)], ["x", "yyyy"], [["a", "bb"], ["ccc", "dddd"]])
    assert means.tolist() == [3.0, 7.0]
    llm = load_config(None, ["task=preference", "llm.preference_method=grpo"]).llm
    assert llm.score_samples == 4 and (decoding(llm)["decoding"], decoding(llm)["samples"]) == ("sampled", 4)
    d = decoding(load_config(None, ["llm.score_samples=2", "llm.rl_temperature=0.7", "llm.seed=5"]).llm)
    assert (d["decoding"], d["samples"], d["temperature"], d["seed"]) == ("sampled", 2, 0.7, 5)
    d = decoding(load_config(None, ["llm.score_samples=0"]).llm)
    assert (d["decoding"], d["samples"], d["temperature"]) == ("greedy", 1, 0.0)
    with pytest.raises(ConfigError, match="score_samples"):
        load_config(None, ["llm.score_samples=-1"])


@pytest.mark.unit
def test_rl_batch_must_hold_whole_groups_of_completions():
    from tuneline.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"llm.batch_size x llm.grad_accum \(6 x 1\).*multiple of llm.rl_num_generations \(4\)"):
        load_config(None, ["task=preference", "llm.preference_method=grpo", "llm.batch_size=6"])
    assert load_config(None, ["task=preference", "llm.preference_method=dpo", "llm.batch_size=6"]).llm.batch_size == 6
    with pytest.raises(ConfigError, match="grpo"):
        load_config(None, ["task=preference", "llm.preference_method=ppo"])


@pytest.mark.unit
def test_the_rl_dag_looks_up_the_reward_model_every_time_and_keys_on_it(tmp_path):
    from tuneline.config import load_config
    from tuneline.pipeline.dvcfile import stages
    from tuneline.pipeline.fingerprint import read_values, stage_key

    grpo = load_config(None, ["task=preference", "llm.preference_method=grpo"])
    select = stages(grpo)["select"]
    assert select["always_changed"] is True and "llm.reward_model" in select["params"]
    assert "always_changed" not in stages(load_config(None, ["task=preference"]))["select"]
    assert "llm.reward_model" in read_values(grpo, "select")
    # a folder given as the reward model is a dep, and its content is in the key
    folder = tmp_path / "rm"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"one")
    by_path = load_config(None, ["task=preference", "llm.preference_method=rloo", f"llm.reward_model={folder}"])
    assert str(folder) in stages(by_path)["select"]["deps"] and "always_changed" not in stages(by_path)["select"]
    before = stage_key("select", by_path, tmp_path)
    (folder / "adapter_model.safetensors").write_bytes(b"two")
    assert stage_key("select", by_path, tmp_path) != before


@pytest.mark.unit
def test_the_flow_trains_no_policy_on_a_reward_model_that_was_refused():
    from tuneline.flows.rlhf import RewardGateError, reward_for_policy

    reg = {"registered_model_name": "tuneline-reward-model", "version": "2", "model_uri": "models:/tuneline-reward-model/2"}
    assert reward_for_policy({"register": reg, "promote": {"promote": True}}) == "models:/tuneline-reward-model/2"
    beaten = {"promote": False, "champion_version": "1", "reason": "ties"}
    assert reward_for_policy({"register": reg, "promote": beaten}) == "models:/tuneline-reward-model@champion"
    refused = {"promote": False, "champion_version": None, "reason": "pairwise_accuracy 0.5500 is not significantly above chance"}
    with pytest.raises(RewardGateError, match="version 2 was not promoted and there is no champion: pairwise_accuracy 0.5500"):
        reward_for_policy({"register": reg, "promote": refused})


@pytest.mark.unit
def test_a_reward_model_folder_is_checked_and_named_in_errors(tmp_path):
    from tuneline.llm.reward import RewardModelError, resolve

    with pytest.raises(RewardModelError, match=r"llm.reward_model .*: not models:/… and not a reward-model adapter folder"):
        resolve(str(tmp_path), "sqlite:///unused.db", list, 0.05, 8)
    (tmp_path / "tuneline_llm.json").write_text('{"method": "reward_model", "base": {}}')
    with pytest.raises(RewardModelError, match="the test split has none; register it instead"):
        resolve(str(tmp_path), "sqlite:///unused.db", list, 0.05, 8)
    with pytest.raises(RewardModelError, match="expected models:/NAME@ALIAS or models:/NAME/VERSION"):
        resolve("models:/x@", f"sqlite:///{tmp_path / 'mlflow.db'}", list, 0.05, 8)


@pytest.mark.data
def test_a_prompts_file_serves_grpo_and_rloo_but_not_dpo(llm_tokenizer, tmp_path):
    from tuneline.config import load_config
    from tuneline.expectations import DataValidationError
    from tuneline.llm.data import read_jsonl
    from tuneline.llm.preprocess import load_pairs, preprocess
    from tuneline.llm.validation import validate

    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Can you help me with task {i}?"} for i in range(8)])
    raw = read_jsonl(path, "preference").assign(where=lambda d: [f"prompts.jsonl:{n}" for n in d["line"]])
    grpo = load_config(None, ["task=preference", "llm.preference_method=grpo", "preprocess.test_size=0.25"])
    assert validate("preference", grpo.llm, raw, path.name, llm_tokenizer, tmp_path / "validation")["rows"] == 8
    preprocess("preference", grpo.llm, grpo.preprocess, raw, llm_tokenizer, tmp_path / "processed")
    rows = load_pairs(tmp_path / "processed" / "train.parquet")
    assert len(rows) == 6 and rows[0]["prompt"][0]["role"] == "user" and rows[0]["chosen"] == ""
    dpo = load_config(None, ["task=preference"])
    with pytest.raises(DataValidationError, match="field 'chosen' is missing from the file"):
        validate("preference", dpo.llm, raw, path.name, llm_tokenizer, tmp_path / "validation-dpo")
