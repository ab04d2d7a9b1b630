"""The training keys every LoRA task section shares (the LLM tasks' `llm:`, summarization's
`summarization:`): the names tuneline.engine.lora reads, with one set of defaults and bounds."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

# The methods that optimise a policy against a reward (trl GRPOTrainer / RLOOTrainer).
RL_METHODS = ("grpo", "rloo")


class LoRATrainingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    learning_rate: float = Field(2e-4, gt=0)
    epochs: int = Field(1, ge=1)
    max_steps: Optional[int] = Field(None, ge=1, description="stop after this many optimizer steps (overrides epochs)")
    batch_size: int = Field(4, ge=1)
    eval_batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    seed: int = 42
    # LoRA (QLoRA: 4-bit base where a CUDA bitsandbytes is present)
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    quantization: Literal["auto", "none", "4bit"] = Field("auto", description="auto = 4-bit QLoRA on CUDA with bitsandbytes, else none")
    trust_remote_code: bool = False
