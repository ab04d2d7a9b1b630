"""What `train.strategy: auto` and `train.precision: auto` become on this machine, and the per-strategy
hyperparameter defaults (torch only: it runs on the worker that trains).

The rule is static — read from the device and the CPU's flags, never timed — so a machine always resolves
the same way and a cache key can hold the result (README, "Fine-tuning strategies"). The defaults were
chosen by measurement (BENCHMARKS.md, "Fine-tuning default").
"""
from __future__ import annotations

import functools
from pathlib import Path

# (learning_rate, epochs, batch_size) used where train.* leaves them null.
STRATEGY_DEFAULTS: dict[str, dict[str, float | int]] = {
    "feature_extraction": {"learning_rate": 0.0, "epochs": 1, "batch_size": 64},  # logistic head: lr/epochs unused
    "partial": {"learning_rate": 3e-4, "epochs": 2, "batch_size": 32},
    "full": {"learning_rate": 5e-5, "epochs": 3, "batch_size": 32},
    "lora": {"learning_rate": 5e-4, "epochs": 3, "batch_size": 32},
}


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@functools.lru_cache(maxsize=1)
def cpu_bf16() -> bool:
    """The CPU computes bf16 natively (avx512_bf16 or AMX) and oneDNN is there to use it."""
    import torch

    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: stay in fp32
        return False
    return torch.backends.mkldnn.is_available() and any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def resolve_strategy(strategy: str) -> str:
    return strategy if strategy != "auto" else "full" if cuda() else "partial"


def resolve_precision(precision: str) -> str:
    return precision if precision != "auto" else "bf16" if cuda() or cpu_bf16() else "fp32"


def resolve(cfg, strategy: str | None = None):
    """`cfg` (a TrainConfig) with strategy, precision and null hyperparameters made concrete."""
    strategy = resolve_strategy(strategy or cfg.strategy)
    update = {"strategy": strategy, "precision": resolve_precision(cfg.precision)}
    for key, value in STRATEGY_DEFAULTS[strategy].items():
        if getattr(cfg, key) is None:
            update[key] = value
    return cfg.model_copy(update=update)


def autocast(precision: str, device_type: str):
    """bf16 autocast under bf16, for inference and for training alike: training on a CPU too was
    measured faster than fp32 for the top two layers, at equal accuracy (BENCHMARKS.md, "bf16 vs fp32")."""
    import torch

    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")
