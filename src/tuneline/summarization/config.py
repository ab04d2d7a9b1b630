"""The `summarization:` section of params.yaml.

Training keys carry the LLM section's names (learning_rate, epochs, max_steps, batch_size,
grad_accum, weight_decay, warmup_ratio, scheduler, seed, lora_*, quantization), so the same LoRA
engine (tuneline.engine.lora) trains both.
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from tuneline.engine.base_model import PACKAGED_BASE
from tuneline.engine.lora_config import LoRATrainingConfig

ASPECTS = ("challenge", "approach", "outcome")
# LoRA targets per model family where summarization.lora_target_modules is null.
DEFAULT_TARGETS = {"causal": ["q_proj", "v_proj"], "seq2seq": ["q", "v"]}
TEMPLATE_TOKENS = 48  # the chat template's and the instruction's share of a training example


class SummarizationConfig(LoRATrainingConfig):
    # the training keys (learning_rate, epochs, max_steps, batch_size, eval_batch_size, ..., lora_r/alpha/dropout,
    # quantization, trust_remote_code) come from LoRATrainingConfig, shared with the llm section

    family: Literal["causal", "seq2seq"] = Field(
        "causal", description="causal = a decoder-only LM with a chat template (SFT); seq2seq = AutoModelForSeq2SeqLM (t5, bart)")
    base_model: str = Field(PACKAGED_BASE, description=f"'{PACKAGED_BASE}' (the packaged SmolLM2 GGUF), a hub id or a local folder")
    registered_model_name: Optional[str] = Field(None, description="null = tuneline-summarizer")
    # columns of data.source / data.test_source (JSONL or CSV)
    document_column: str = "document"
    summary_column: str = "summary"
    instruction_column: Optional[str] = Field(None, description="a per-row instruction; null = summarization.instruction")
    aspect_column: Optional[str] = Field(None, description="a per-row aspect, put into aspect_instruction; also keys duplicates")
    instruction: str = "Summarize the following document in one or two sentences."
    aspect_instruction: str = "Summarize the {aspect} of the following paper in one sentence."
    # the packaged sample (data.source left at its default): aclsum
    aclsum_aspects: list[Literal["challenge", "approach", "outcome"]] = Field(default_factory=lambda: list(ASPECTS), min_length=1)
    aclsum_sections: list[Literal["abstract", "introduction", "conclusion"]] = Field(
        default_factory=lambda: ["abstract", "conclusion"], min_length=1, description="the paper sections joined into the document")
    # lengths in the base tokenizer's tokens
    max_document_tokens: int = Field(768, ge=4, description="longer documents keep their first max_document_tokens tokens")
    max_truncated_fraction: float = Field(0.2, ge=0, le=1, description="validation fails when more documents than this are cut")
    min_document_tokens: int = Field(8, ge=1)
    max_summary_tokens: int = Field(128, ge=4, description="a longer reference summary fails validation")
    # cross-validation
    cv_mode: Literal["kfold", "holdout"] = Field("holdout", description="kfold = cv.k folds; holdout = one validation split")
    holdout_fraction: float = Field(0.1, gt=0, lt=0.5)
    lora_target_modules: Optional[list[str]] = Field(None, description="null = q_proj,v_proj (causal) or q,v (seq2seq)")
    # generation and scoring
    max_new_tokens: int = Field(64, ge=1)
    rouge_bootstrap_samples: int = Field(1000, ge=100, description="seeded bootstrap of the ROUGE intervals (seed: summarization.seed)")
    use_stemmer: bool = Field(True, description="Porter stemming before ROUGE matching (rouge-score's option)")
    table_rows: int = Field(50, ge=0, description="test documents in the MLflow table of base and tuned summaries")

    @model_validator(mode="after")
    def _template_has_aspect(self) -> "SummarizationConfig":
        if "{aspect}" not in self.aspect_instruction:
            raise ValueError("aspect_instruction must contain '{aspect}'")
        return self

    @property
    def max_length(self) -> int:
        """A training example's longest token count: document + summary + template (the SFT trainer's max_length)."""
        return self.max_document_tokens + self.max_summary_tokens + TEMPLATE_TOKENS

    def targets(self) -> list[str]:
        return list(self.lora_target_modules or DEFAULT_TARGETS[self.family])

    def model_name(self) -> str:
        return self.registered_model_name or "tuneline-summarizer"
