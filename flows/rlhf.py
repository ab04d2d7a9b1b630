"""The RLHF loop as the fine-tuning guide describes it: a reward model learnt from ranked answers,
then a policy optimised against it (GRPO or RLOO: trl's maintained forms of the guide's PPO).

Each half is an ordinary tuneline project run of the pipeline flow, in the same project (one
tracking store, one registry): first `task=preference llm.preference_method=reward_model` with
`reward_overrides`, whose promotion gate requires held-out pairwise accuracy significantly above
chance; then `policy_overrides` (llm.preference_method grpo by default) with llm.reward_model set to
the version that passed. The RL half is the same run as `dvc repro` with that llm.reward_model, and
it checks the version's recorded gate again before any RL. With train.work_pool set, each half's
fine-tuning goes to that pool (the `gpu` deployment), as in the pipeline flow.
"""
from __future__ import annotations

from typing import Optional

from prefect import flow

from tuneline.flows.finetune import library_logging
from tuneline.flows.pipeline import pipeline

REWARD_HALF = ["task=preference", "llm.preference_method=reward_model"]


class RewardGateError(RuntimeError):
    """The reward model the loop trained did not pass its gate (and no champion did): no policy is trained."""


def reward_for_policy(reward: dict) -> str:
    """The reward model the RL half uses: the version just trained when it was promoted, else the
    champion it did not beat (which passed its own gate); none when neither exists."""
    reg, decision = reward["register"], reward["promote"]
    if decision["promote"]:
        return reg["model_uri"]
    if decision.get("champion_version"):
        return f"models:/{reg['registered_model_name']}@champion"
    raise RewardGateError(f"reward model {reg['registered_model_name']} version {reg['version']} was not promoted and there is "
                          f"no champion: {decision['reason']}; no policy trained")


@flow(name="tuneline-rlhf")
def rlhf(params: Optional[str] = "params.yaml", reward_overrides: Optional[list[str]] = None,
         policy_overrides: Optional[list[str]] = None, root: str = ".") -> dict:
    """Train and gate a reward model, then optimise a policy against it; both halves' results."""
    library_logging()
    reward = pipeline(params=params, overrides=[*REWARD_HALF, *(reward_overrides or [])], root=root)
    uri = reward_for_policy(reward)
    policy = pipeline(params=params, overrides=["task=preference", "llm.preference_method=grpo", *(policy_overrides or []),
                                                f"llm.reward_model={uri}"], root=root)
    return {"reward_model": reward, "policy": policy, "reward_model_uri": uri}
