"""Train and run a summarizer (torch/transformers/peft/trl only: no MLflow, Prefect or DVC): a LoRA adapter
on a causal LM (SFT on one chat exchange, the loss on the summary tokens only) or on a seq2seq model (t5, bart).
The adapter folder's meta file records the family, so loading picks the right model class.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Optional

from tuneline.engine import lora
from tuneline.summarization.data import prompt_text

log = logging.getLogger(__name__)


def conversations(rows: list[dict]) -> list[list[dict]]:
    return [[{"role": "user", "content": prompt_text(r["instruction"], r["document"])},
             {"role": "assistant", "content": r["summary"]}] for r in rows]


def _seq2seq_dataset(tokenizer, rows: list[dict], cfg):
    from datasets import Dataset

    enc = tokenizer([prompt_text(r["instruction"], r["document"]) for r in rows], truncation=True,
                    max_length=cfg.max_document_tokens + 48)
    labels = tokenizer(text_target=[r["summary"] for r in rows], truncation=True, max_length=cfg.max_summary_tokens)
    return Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels["input_ids"]})


def _train_seq2seq(base_folder: str, rows: list[dict], cfg, adapter_dir: Path, meta: dict) -> dict:
    from peft import get_peft_model
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    lora.quiet()
    tokenizer = AutoTokenizer.from_pretrained(base_folder, trust_remote_code=cfg.trust_remote_code)
    model = get_peft_model(lora.load_base(base_folder, cfg, "seq2seq", tokenizer, quantized=False), lora.lora_config(cfg, "seq2seq"))
    with tempfile.TemporaryDirectory(prefix="tuneline-sum-train-", ignore_cleanup_errors=True) as work:
        args = Seq2SeqTrainingArguments(**lora.training_args(cfg, work, quantized=False), remove_unused_columns=False)
        trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=_seq2seq_dataset(tokenizer, rows, cfg),
                                 data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
                                 processing_class=tokenizer)
        lora.quiet_progress(trainer)
        log.info("training seq2seq LoRA (r=%d) on %d examples", cfg.lora_r, len(rows))
        return lora.run_and_save(trainer, tokenizer, adapter_dir, "summarization", meta, quantized=False)


def train_summarizer(base_folder: str, rows: list[dict], cfg, adapter_dir: Path, meta: Optional[dict] = None) -> dict:
    """Train a LoRA adapter for `cfg.family` on processed rows (document, summary, instruction)."""
    cfg = cfg.model_copy(update={"lora_target_modules": cfg.targets()})  # the engine reads lora_target_modules
    meta = (meta or {}) | {"family": cfg.family, "task": "summarization", "max_document_tokens": cfg.max_document_tokens,
                           "max_new_tokens": cfg.max_new_tokens}
    if cfg.family == "seq2seq":
        return _train_seq2seq(base_folder, rows, cfg, Path(adapter_dir), meta)
    return lora.train_adapter("chat_sft", base_folder, conversations(rows), cfg, Path(adapter_dir), meta | {"method": "summarization"})


def summarize(model, tokenizer, meta: dict, rows: list[dict], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy summaries of rows (document, instruction) by the adapter whose meta is `meta`, in order, under bf16
    autocast where this machine has it; a seq2seq model reads at most the training cut + 64 tokens."""
    from tuneline.engine.generation import generate
    from tuneline.engine.hardware import resolve_precision

    seq2seq, prompts = meta.get("family", "causal") == "seq2seq", [prompt_text(r["instruction"], r["document"]) for r in rows]
    return generate(model, tokenizer, prompts, max_new_tokens, batch_size=batch_size, seq2seq=seq2seq, desc="summarizing",
                    precision=resolve_precision("auto"), max_input_tokens=int(meta.get("max_document_tokens") or 0) + 64 if seq2seq else None)


def summarize_with_adapter(adapter_dir: Path, base_folder: str, rows: list[dict], max_new_tokens: int, batch_size: int,
                           with_base: bool = False) -> dict:
    """Load the adapter once; summarize `rows` with it and, with `with_base`, with the bare base (adapter disabled)."""
    from tuneline.engine.adapters import load_adapter

    model, tokenizer, meta = load_adapter(adapter_dir, base_folder)
    out = {"summaries": summarize(model, tokenizer, meta, rows, max_new_tokens, batch_size), "meta": meta}
    if with_base:
        with model.disable_adapter():
            out["base_summaries"] = summarize(model, tokenizer, meta, rows, max_new_tokens, batch_size)
    return out
