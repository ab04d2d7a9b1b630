"""Fine-tuning engine: partial freezing, full fine-tuning and LoRA (torch/transformers/peft only).

Speed by design: text tokenised once; length-grouped batches padded per batch; bf16 autocast and
fused AdamW on CUDA; the loss stays on the device until an epoch ends (no per-step host sync).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from tuneline.engine import checkpoints, distributed, prefix
from tuneline.engine.batching import IGNORE, LabelledRows, LengthGroupedBatches, Shard, encode, loader, make_collate
from tuneline.config import TrainConfig
from tuneline.engine.features import use_all_cores
from tuneline.engine.hardware import autocast, resolve
from tuneline.metrics import classification_metrics
from tuneline.engine.models import load_kwargs, quiet_transformers

log = logging.getLogger(__name__)

# LoRA targets of the encoder families peft's own table lacks (it has bert, roberta, deberta-v2, llama, gpt2, ...).
LORA_TARGETS = {"distilbert": ["q_lin", "v_lin"], "mpnet": ["q", "v"], "modernbert": ["Wqkv"]}


def lora_targets(model_type: str, override: Optional[list[str]]) -> Optional[list[str]]:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TABLE

    return list(override) if override else LORA_TARGETS.get(model_type) or PEFT_TABLE.get(model_type)


def build_model(resolved: str, labels: Sequence[str], cfg: TrainConfig, strategy: str):
    """A sequence classifier from a pre-trained encoder with the strategy's parameters trainable."""
    quiet_transformers()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    # The new head's initial weights depend only on the seed, not on what ran earlier in the
    # process (a resumed run and an uninterrupted one start from the same model).
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(resolved, trust_remote_code=cfg.trust_remote_code)
    model = AutoModelForSequenceClassification.from_pretrained(
        resolved, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={l: i for i, l in enumerate(labels)}, **load_kwargs(resolved, cfg.trust_remote_code, cfg.allow_pickle_weights),
    )
    if tokenizer.pad_token is None:  # decoder-only bases have no pad token
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    base = model.base_model
    if strategy == "feature_extraction":
        base.requires_grad_(False)
    elif strategy == "partial":  # the whole embeddings block (positions, LayerNorm), not just the table
        for module in prefix.frozen_modules(model, cfg.freeze_layers):
            module.requires_grad_(False)
    elif strategy == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                 lora_dropout=cfg.lora_dropout,
                                                 target_modules=lora_targets(model.config.model_type, cfg.lora_target_modules)))
    return model, tokenizer


def parameter_counts(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


@dataclass
class FitResult:
    model: object
    tokenizer: object
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    samples_per_s: float = 0.0
    steps: int = 0
    resumed_from: int = 0  # global step of the checkpoint this run continued from (0: fresh start)
    step_losses: list[float] = field(default_factory=list)  # per optimizer step, over the global batch


def _optimizer(model, cfg: TrainConfig, dev: torch.device) -> torch.optim.Optimizer:
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]  # no decay on biases and norms
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=dev.type in ("cuda", "cpu"))  # fused: one kernel, not a loop per tensor


def _batches(tokenizer, texts, y, max_length: int, batch_size: int, seed: int, shuffle: bool, dev: torch.device,
             states: Optional[prefix.PrefixStates] = None, shard: tuple[int, int] = (0, 1)):
    """(sampler, loader): token batches, or the frozen prefix's cached states for the same rows;
    with `shard` (rank, world size), this rank's share of every global batch."""
    if states is not None:
        lengths, rows, collate = states.lengths, LabelledRows("row", range(len(states)), y), prefix.collate(states)
    else:
        ids = encode(tokenizer, texts, max_length)
        lengths, rows, collate = [len(i) for i in ids], LabelledRows("input_ids", ids, y), make_collate(tokenizer.pad_token_id)
    sampler = LengthGroupedBatches(lengths, batch_size, seed, shuffle=shuffle)
    if shard[1] > 1:
        sampler = Shard(sampler, *shard)
    return sampler, loader(rows, sampler, collate, dev.type == "cuda")


def _logits(model, batch: dict, dev: torch.device, freeze: int, net=None):
    """`model`'s logits, through `net` (its DDP wrapper) when given."""
    batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
    with prefix.swapped(model, freeze) if "inputs_embeds" in batch else contextlib.nullcontext():
        return (net or model)(**batch).logits


def predict_proba(model, tokenizer, texts: Sequence[str], max_length: int, batch_size: int, desc: str = "predicting",
                  precision: str = "fp32", states: Optional[prefix.PrefixStates] = None, freeze: int = 0) -> np.ndarray:
    """Class probabilities in input order; with `states`, from the cached frozen prefix of `texts`."""
    from tqdm.auto import tqdm

    dev = next(model.parameters()).device
    batches, data = _batches(tokenizer, texts, None, max_length, batch_size, 0, False, dev, states)
    n = len(states) if states is not None else len(texts)
    out = np.empty((n, model.config.num_labels), dtype=np.float64)
    model.eval()
    with torch.inference_mode(), autocast(precision, dev.type), tqdm(total=n, desc=desc, unit="text", leave=False) as bar:
        for idx, batch in zip(iter(batches), data):
            out[idx] = torch.softmax(_logits(model, batch, dev, freeze).double(), -1).cpu().numpy()
            bar.update(len(idx))
    return out


def train_model(model, tokenizer, texts: Sequence[str], y: np.ndarray, cfg: TrainConfig,
                val: Optional[tuple[Sequence[str], np.ndarray]] = None, desc: str = "fine-tuning",
                checkpoint_dir: Optional[Path] = None, frozen_layers: Optional[int] = None,
                states: Optional[prefix.PrefixStates] = None, val_states: Optional[prefix.PrefixStates] = None) -> FitResult:
    """Train; with `val` and train.early_stopping_patience, stop early and restore the best epoch.

    With `checkpoint_dir`, save a checkpoint every train.checkpoint_every optimizer steps and, on
    start, continue from the newest one there (a lost process loses at most that many steps).
    `frozen_layers` (partial): the embeddings and that many bottom layers run in eval mode, as a
    cache of their outputs implies; with `states` (that cache for `texts`) they do not run at all.
    Inside a torch.distributed process group (tuneline.engine.distributed) it is one DDP rank: it
    trains on its share of every global batch, and only rank 0 writes checkpoints."""
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    use_all_cores()
    cfg = resolve(cfg)  # a no-op for a resolved config; makes `auto` and null defaults concrete
    rank, world = distributed.world()
    dev = distributed.device()
    if world > 1 and dev.type == "cpu" and not os.environ.get("OMP_NUM_THREADS"):  # gloo ranks share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    torch.manual_seed(cfg.seed + rank)  # one process: cfg.seed; ranks draw different dropout, as for different rows
    model.to(dev)
    n_classes = model.config.num_labels
    freeze = frozen_layers or 0
    frozen = prefix.frozen_modules(model, freeze) if frozen_layers is not None else []
    batches, data = _batches(tokenizer, texts, y, cfg.max_length, cfg.batch_size, cfg.seed, True, dev, states, (rank, world))
    steps_per_epoch = math.ceil(len(batches) / cfg.grad_accum)
    total = cfg.max_steps or steps_per_epoch * cfg.epochs
    epochs = math.ceil(total / steps_per_epoch)
    optimizer = _optimizer(model, cfg, dev)
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total), num_training_steps=total)
    weight = torch.ones(n_classes, device=dev)
    if cfg.class_weight == "balanced":
        counts = np.bincount(y, minlength=n_classes).astype(float)
        weight = torch.tensor(len(y) / (n_classes * np.maximum(counts, 1)), dtype=torch.float32, device=dev)
    result = FitResult(model, tokenizer)
    best, best_score, patience, step, seen, train_time = None, -math.inf, 0, 0, 0, 0.0
    first_epoch, done_in_epoch, running_loss, n_done = 0, 0, 0.0, 0
    every = cfg.checkpoint_every if checkpoint_dir is not None else None
    resume_from = checkpoints.latest(checkpoint_dir)
    if resume_from is not None:
        state = checkpoints.load(resume_from)
        missing = set(checkpoints.trainable_state(model)) - set(state["model"])
        if missing or state["total"] != total:
            raise RuntimeError(f"{resume_from}: checkpoint does not fit this model/config (missing {sorted(missing)[:3]}, "
                               f"total steps {state['total']} vs {total}); delete {checkpoint_dir} to start over")
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, first_epoch, done_in_epoch = state["step"], state["epoch"], state["batches_done"]
        # sums over all ranks: rank 0 carries them on (each rank adds only its own rows from here)
        running_loss, seen = (state["running_loss"], state["seen"]) if rank == 0 else (0.0, 0)
        n_done, train_time = state["n_batches"], state["train_time"]
        result.history, result.best_epoch = list(state["history"]), state["best_epoch"]
        best_score, patience, best = state["best_score"], state["patience"], state.get("best")
        result.resumed_from = step
        log.info("%s: resuming from %s at global step %d (epoch %d, batch %d)", desc, resume_from.name, step, first_epoch + 1, done_in_epoch)
    net = model
    if world > 1:  # after the checkpoint is loaded: DDP starts every rank from rank 0's weights
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    step_losses, step_loss = [], 0.0
    bar = tqdm(total=total, initial=step, desc=desc, unit="step", leave=False, disable=rank != 0)
    for epoch in range(first_epoch, epochs):
        model.train()
        for module in frozen:  # no dropout below the trainable top: the cache's outputs are these
            module.eval()
        batches.set_epoch(epoch)
        resumed = epoch == first_epoch and done_in_epoch > 0
        running = torch.tensor(running_loss if resumed else 0.0, device=dev)
        n_batches, start = (n_done if resumed else 0), time.perf_counter()
        batch_iter = iter(data)  # creating it draws from the torch RNG: restore the checkpoint's state after
        if resumed:
            ranks_rng = state.get("rank_rng") or [state["rng"]]
            checkpoints.set_rng_state(ranks_rng[rank] if len(ranks_rng) == world else state["rng"])
        for i, batch in enumerate(batch_iter):
            if resumed and i < done_in_epoch:
                continue  # done before the checkpoint; the order is the same (seed, epoch)
            labels = batch.pop("labels")
            seen += int((labels != IGNORE).sum())
            labels = labels.to(dev, non_blocking=True)
            last = (i + 1) % cfg.grad_accum == 0 or i + 1 == len(batches)
            with net.no_sync() if world > 1 and not last else contextlib.nullcontext():  # all-reduce once per step
                with autocast(cfg.precision, dev.type):
                    logits = _logits(model, batch, dev, freeze, net)
                share = global_batch_loss(logits.float(), labels, weight) / cfg.grad_accum
                (share * world).backward()  # DDP averages the ranks' gradients: x world makes that their sum
            running += share.detach()
            step_loss = step_loss + share.detach()
            n_batches += 1
            if last:
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step_losses.append(step_loss)  # a device tensor: no host sync per step
                step_loss = 0.0
                step += 1
                bar.update(1)
                if step >= total:
                    break
                if every and step % every == 0:
                    ranks_rng = distributed.gathered(checkpoints.rng_state())
                    totals = distributed.all_sum(torch.stack([running, torch.tensor(float(seen), device=dev)]))
                    if rank == 0:  # one writer
                        checkpoints.save(checkpoint_dir, step, {
                            "step": step, "total": total, "epoch": epoch, "batches_done": i + 1,
                            "model": checkpoints.trainable_state(model), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "rng": ranks_rng[0],
                            **({"rank_rng": ranks_rng} if world > 1 else {}),
                            "running_loss": totals[0].item(), "n_batches": n_batches, "seen": int(totals[1].item()),
                            "train_time": train_time + time.perf_counter() - start, "history": result.history,
                            "best_epoch": result.best_epoch, "best_score": best_score, "patience": patience,
                            **({"best": best} if best is not None else {}),
                        })
        if dev.type == "cuda":
            torch.cuda.synchronize()
        train_time += time.perf_counter() - start
        record = {"epoch": epoch + 1, "step": step,
                  "train_loss": distributed.all_sum(running).item() * cfg.grad_accum / max(n_batches, 1)}
        if val is not None:
            if rank == 0:  # the ranks' weights are equal: one validates, all follow its decision
                proba = predict_proba(model, tokenizer, val[0], cfg.max_length, cfg.batch_size * 2, desc="validating",
                                      precision=cfg.precision, states=val_states, freeze=freeze)
                m = classification_metrics(val[1], proba)
                record.update(val_loss=m["loss"], val_accuracy=m["accuracy"], val_f1_macro=m["f1_macro"])
                if m["f1_macro"] > best_score:
                    best_score, patience, result.best_epoch = m["f1_macro"], 0, epoch + 1
                    best = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
                else:
                    patience += 1
            record, best_score, patience, result.best_epoch = distributed.from_main((record, best_score, patience, result.best_epoch))
        result.history.append(record)
        log.info("%s epoch %d: %s", desc, epoch + 1, {k: round(v, 4) for k, v in record.items() if isinstance(v, float)})
        if step >= total or (cfg.early_stopping_patience is not None and val is not None and patience >= cfg.early_stopping_patience):
            break
    bar.close()
    if best is not None:
        model.load_state_dict(best)
    seen = int(distributed.all_sum(torch.tensor(float(seen), device=dev)).item())
    result.steps, result.samples_per_s = step, seen / max(train_time, 1e-9)
    if step_losses:
        result.step_losses = distributed.all_sum(torch.stack([torch.as_tensor(v, device=dev) for v in step_losses])).tolist()
    return result


def global_batch_loss(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """This rank's part of the global batch's class-weighted mean cross-entropy: its rows' weighted
    losses over the weight sum of ALL ranks' rows (a per-rank mean would weigh the ranks' rows
    differently whenever class weights differ). In one process, CrossEntropyLoss(weight)'s mean."""
    keep = labels != IGNORE
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none", ignore_index=IGNORE)
    w = weight[labels.clamp(min=0)] * keep
    return (w * ce).sum() / distributed.all_sum(w.sum().detach())


def fit(resolved: str, labels: Sequence[str], strategy: str, texts: Sequence[str], y: np.ndarray, cfg: TrainConfig,
        val: Optional[tuple[Sequence[str], np.ndarray]] = None, desc: str = "fine-tuning",
        checkpoint_dir: Optional[Path] = None, frozen_layers: Optional[int] = None,
        states: Optional[prefix.PrefixStates] = None, val_states: Optional[prefix.PrefixStates] = None) -> FitResult:
    """A fresh `strategy` model from the pre-trained `resolved`, trained (train_model's arguments):
    in this process, or with train.devices > 1 in that many data-parallel processes launched
    through torchrun (tuneline.engine.distributed), then loaded here."""
    if cfg.devices > 1 and states is not None:
        log.warning("%s: train.devices=%d, but partial over the frozen-prefix cache trains in one process "
                    "(README, 'Data-parallel fine-tuning')", desc, cfg.devices)
    if cfg.devices == 1 or states is not None:
        model, tokenizer = build_model(resolved, labels, cfg, strategy)
        return train_model(model, tokenizer, texts, y, cfg, val=val, desc=desc, checkpoint_dir=checkpoint_dir,
                           frozen_layers=frozen_layers, states=states, val_states=val_states)
    job = {"resolved": resolved, "labels": list(labels), "strategy": strategy, "cfg": cfg.model_dump(mode="json"),
           "texts": list(texts), "y": [int(v) for v in y], "desc": desc, "frozen_layers": frozen_layers,
           "val": None if val is None else {"texts": list(val[0]), "y": [int(v) for v in val[1]]},
           "checkpoint_dir": None if checkpoint_dir is None else str(Path(checkpoint_dir).resolve())}
    weights, record = distributed.launch(cfg.devices, job, desc)
    model, tokenizer = build_model(resolved, labels, cfg, strategy)  # after: no idle copy while the ranks train
    unexpected = model.load_state_dict(weights, strict=False).unexpected_keys
    if unexpected or set(weights) != set(checkpoints.trainable_state(model)):
        raise distributed.DistributedError(f"{desc}: the data-parallel result does not fit the model (unexpected "
                                           f"{sorted(unexpected)[:3]})")
    model.to(distributed.device())
    return FitResult(model, tokenizer, **record)
