"""LoRA training of a causal LM with trl: SFTTrainer (loss on assistant tokens only), DPOTrainer,
RewardTrainer, and GRPOTrainer / RLOOTrainer (a policy optimised against a reward function: trl 1.16
has no PPOTrainer; GRPO keeps PPO's clipped surrogate with a group baseline in place of the value
model, RLOO a leave-one-out baseline). QLoRA (4-bit base) where CUDA and bitsandbytes are present. Shared by the LLM
tasks (chat SFT, preference) and summarization's causal path (an instruction turn, the summary as
the assistant's answer).

`cfg` is any config with the LLM training keys (tuneline.llm.config.LLMConfig's names: learning_rate,
epochs, max_steps, batch_size, eval_batch_size, grad_accum, weight_decay, warmup_ratio, scheduler,
seed, lora_*, quantization, max_length, trust_remote_code; beta for DPO and as the KL coefficient of
grpo/rloo, with rl_num_generations, rl_max_completion_length, rl_temperature).

Imports only torch/transformers/peft/trl/datasets, so it runs on a GPU box without MLflow/Prefect/DVC.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Optional

from tuneline.engine.models import quiet_transformers as quiet  # noqa: F401  (modelio and the plugin use it)
from tuneline.engine import chat
from tuneline.engine.lora_config import RL_METHODS

log = logging.getLogger(__name__)

ADAPTER_META = "tuneline_llm.json"


class QuantizationUnavailable(RuntimeError):
    pass


def quantization_config(cfg):
    """4-bit NF4 (QLoRA) when asked for or 'auto' and possible; None otherwise."""
    import importlib.util

    import torch

    possible = torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None
    if cfg.quantization == "4bit" and not possible:
        raise QuantizationUnavailable("llm.quantization=4bit needs a CUDA GPU and the bitsandbytes package; use 'auto' or 'none'")
    if cfg.quantization == "none" or not possible:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def lora_config(cfg, method: str, target_modules: Optional[list[str]] = None):
    """`method`: chat_sft/dpo (causal LM), reward_model (a sequence classifier), seq2seq (encoder-decoder)."""
    from peft import LoraConfig, TaskType

    seq_cls = method == "reward_model"
    task_type = TaskType.SEQ_CLS if seq_cls else TaskType.SEQ_2_SEQ_LM if method == "seq2seq" else TaskType.CAUSAL_LM
    return LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=list(target_modules or cfg.lora_target_modules),
        task_type=task_type,
        modules_to_save=["score"] if seq_cls else None,  # the new reward head trains in full
    )


def load_tokenizer(base_folder: str, cfg, method: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_folder, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if method == "chat_sft":
        tokenizer.chat_template = chat.training_chat_template(tokenizer) or tokenizer.chat_template
    return tokenizer


def load_base(base_folder: str, cfg, method: str, tokenizer, quantized: bool = True):
    """The base model for a method: causal LM, a one-logit sequence classifier for rewards, or an
    encoder-decoder (seq2seq)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    quiet()
    kwargs = {"trust_remote_code": cfg.trust_remote_code, "dtype": torch.float32}
    qc = quantization_config(cfg) if quantized else None
    if qc is not None:
        kwargs |= {"quantization_config": qc, "dtype": torch.bfloat16, "device_map": {"": 0}}
    if method == "reward_model":
        from trl.trainer.reward_trainer import suppress_seqcls_warning

        with suppress_seqcls_warning():
            model = AutoModelForSequenceClassification.from_pretrained(base_folder, num_labels=1, **kwargs)
    else:
        model = (AutoModelForSeq2SeqLM if method == "seq2seq" else AutoModelForCausalLM).from_pretrained(base_folder, **kwargs)
    model.config.pad_token_id = tokenizer.pad_token_id
    if qc is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    return model



def _dataset(method: str, rows: list):
    from datasets import Dataset

    if method == "chat_sft":
        return Dataset.from_list([{"messages": conv} for conv in rows])
    if method in RL_METHODS:  # the prompts only: completions are sampled from the policy
        return Dataset.from_list([{"prompt": r["prompt"]} for r in rows])
    return Dataset.from_list([
        {"prompt": r["prompt"], "chosen": [{"role": "assistant", "content": r["chosen"]}],
         "rejected": [{"role": "assistant", "content": r["rejected"]}]}
        for r in rows
    ])


def training_args(cfg, output_dir: str, quantized: bool) -> dict:
    """TrainingArguments keywords shared by every trainer here (trl's configs add max_length)."""
    import torch

    cuda = torch.cuda.is_available()
    return dict(
        output_dir=output_dir, per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.eval_batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_ratio,
        lr_scheduler_type=cfg.scheduler, seed=cfg.seed, data_seed=cfg.seed, logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=False, use_cpu=not cuda,
        # Recomputing activations saves memory a 135M model does not need, at a third more compute.
        gradient_checkpointing=quantized, bf16=bool(cuda and torch.cuda.is_bf16_supported()),
    )


def quiet_progress(trainer) -> None:
    """The Trainer's tqdm bar, without printing every logged dict (the history is kept in the adapter's meta)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class QuietProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            return None

    trainer.pop_callback(PrinterCallback)
    trainer.pop_callback(ProgressCallback)
    trainer.add_callback(QuietProgress())


def _rl_args(cfg) -> dict:
    """GRPO/RLOO: beta > 0 keeps a KL penalty to the reference, which with a LoRA policy is the base
    itself (trl disables the adapter to score it); batch_size counts completions, rl_num_generations per prompt."""
    return {"beta": cfg.beta, "num_generations": cfg.rl_num_generations, "max_completion_length": cfg.rl_max_completion_length,
            "temperature": cfg.rl_temperature, "log_completions": False}


def make_trainer(method: str, model, tokenizer, rows: list, cfg, output_dir: str, quantized: bool, reward_funcs=None):
    from trl import (DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, RewardConfig, RewardTrainer, RLOOConfig, RLOOTrainer,
                     SFTConfig, SFTTrainer)

    lengths = {"max_length": cfg.max_length, "dataset_num_proc": None}
    trainers = {"chat_sft": (SFTTrainer, SFTConfig, lambda: {"assistant_only_loss": True} | lengths),
                "dpo": (DPOTrainer, DPOConfig, lambda: {"beta": cfg.beta} | lengths),
                "reward_model": (RewardTrainer, RewardConfig, lambda: lengths),
                "grpo": (GRPOTrainer, GRPOConfig, lambda: _rl_args(cfg)), "rloo": (RLOOTrainer, RLOOConfig, lambda: _rl_args(cfg))}
    if method not in trainers:
        raise ValueError(f"unknown LLM method {method!r}")
    trainer_cls, config_cls, extra = trainers[method]
    args = config_cls(**extra(), **training_args(cfg, output_dir, quantized))
    if (method in RL_METHODS) != (reward_funcs is not None):
        raise ValueError(f"{method}: reward_funcs {'missing' if reward_funcs is None else 'given to a method without a reward'}")
    more = {"reward_funcs": reward_funcs} if reward_funcs is not None else {}
    trainer = trainer_cls(model=model, args=args, train_dataset=_dataset(method, rows), processing_class=tokenizer,
                          peft_config=lora_config(cfg, method), **more)
    quiet_progress(trainer)
    return trainer


def train_adapter(method: str, base_folder: str, rows: list, cfg, adapter_dir: Path,
                  meta: Optional[dict] = None, reward_funcs=None) -> dict:
    """Train a LoRA adapter on `rows` (conversations for SFT, pairs otherwise; for grpo/rloo only their
    prompts, with `reward_funcs` scoring the sampled completions); save it with its tokenizer.

    Returns training statistics: examples, steps, loss, seconds and samples/s (of the trainer loop).
    """
    tokenizer = load_tokenizer(base_folder, cfg, method)
    quantized = quantization_config(cfg) is not None
    model = load_base(base_folder, cfg, method, tokenizer)
    with tempfile.TemporaryDirectory(prefix="tuneline-llm-train-", ignore_cleanup_errors=True) as work:
        trainer = make_trainer(method, model, tokenizer, rows, cfg, work, quantized, reward_funcs)
        log.info("training %s LoRA (r=%d) on %d examples%s", method, cfg.lora_r, len(trainer.train_dataset),
                 " with a 4-bit base (QLoRA)" if quantized else "")
        return run_and_save(trainer, tokenizer, Path(adapter_dir), method, meta, quantized)


def run_and_save(trainer, tokenizer, adapter_dir: Path, method: str, meta: Optional[dict], quantized: bool) -> dict:
    """Train, save the adapter and tokenizer, and write its meta file (method, `meta`, statistics, loss history)."""
    start = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - start
    trainer.model.save_pretrained(str(adapter_dir))
    tokenizer.save_pretrained(str(adapter_dir))
    history = [h for h in trainer.state.log_history if "loss" in h]
    stats = {
        "examples": len(trainer.train_dataset), "steps": int(trainer.state.global_step), "epochs": float(out.metrics.get("epoch", 0.0)),
        "train_loss": float(out.training_loss), "train_seconds": seconds,
        "train_samples_per_second": float(out.metrics.get("train_samples_per_second", 0.0)),
        "quantized_4bit": quantized, "trainable_parameters": int(sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)),
    }
    _portable_adapter_config(adapter_dir, (meta or {}).get("base", {}).get("id"))
    (adapter_dir / ADAPTER_META).write_text(json.dumps({"format": 1, "method": method, **(meta or {}),
                                                        "training": stats, "history": history}, indent=2) + "\n", encoding="utf-8")
    return stats


def _portable_adapter_config(adapter_dir: Path, base_id: Optional[str]) -> None:
    """peft stores the base's absolute path; keep the base's reference id instead (the loader passes the model)."""
    path = Path(adapter_dir) / "adapter_config.json"
    if base_id and path.is_file():
        conf = json.loads(path.read_text(encoding="utf-8"))
        conf["base_model_name_or_path"] = base_id
        path.write_text(json.dumps(conf, indent=2) + "\n", encoding="utf-8")
