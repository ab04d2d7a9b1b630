"""Data-parallel fine-tuning on this CPU: train.devices 2 (two gloo processes through torchrun) vs 1,
on the same rows, the same global batch and the same steps, measured side by side in one run.

python -m benchmarks.ddp_cpu [--strategies full lora] [--rows 640] [--steps 16] [--repeats 2]   (writes `ddp-cpu`)

On a 2-core machine two processes share the cores that one process already uses, so the figure
measures DDP's overhead (gradient all-reduce over gloo, the split batch, a second copy of the
model), not a speed-up: expected at or below 1x. The speed-up DDP exists for needs one GPU per
process. Training samples/s counts the training loop only (FitResult.samples_per_s); wall s adds
the launch (torchrun, each rank's imports and model load) and returning the weights.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

from benchmarks.report import spread, stamp, update_section


@contextlib.contextmanager
def _threads(n: str | None):
    """OMP_NUM_THREADS for a one-process run (tuneline.engine.features.use_all_cores reads it)."""
    old = os.environ.get("OMP_NUM_THREADS")
    if n is not None:
        os.environ["OMP_NUM_THREADS"] = n
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ddp_cpu")
    p.add_argument("--strategies", nargs="+", default=["full", "lora"], choices=["full", "partial", "lora"])
    p.add_argument("--rows", type=int, default=640)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args(argv)

    from benchmarks.finetune_default import _split
    from tuneline.config import DEFAULT_MODEL, TrainConfig
    from tuneline.engine.models import resolve_model
    from tuneline.engine.trainer import fit

    train, _, names = _split()
    train = train.groupby("label_id").head(a.rows // len(names))
    texts, y = train["text"].tolist(), train["label_id"].to_numpy()
    resolved = resolve_model(DEFAULT_MODEL)
    lines = []
    for strategy in a.strategies:
        runs = {"1 process, 2 threads": (1, None), "1 process, 1 thread": (1, "1"), "2 processes, 1 thread each": (2, None)}
        speed, wall, loss = ({k: [] for k in runs} for _ in range(3))
        for _ in range(a.repeats):
            for name, (devices, threads) in runs.items():  # alternated, so load changes hit all alike
                cfg = TrainConfig(strategy=strategy, precision="fp32", batch_size=32, max_steps=a.steps, checkpoint_every=None,
                                  devices=devices)
                with _threads(threads):
                    start = time.perf_counter()
                    result = fit(resolved, names, strategy, texts, y, cfg, desc=f"{strategy}, {name}",
                                 frozen_layers=cfg.freeze_layers if strategy == "partial" else None)
                wall[name].append(time.perf_counter() - start)
                speed[name].append(result.samples_per_s)
                loss[name].append(result.history[-1]["train_loss"])
                print(f"{strategy}, {name}: {result.samples_per_s:.1f} samples/s, {wall[name][-1]:.0f} s wall, "
                      f"mean train loss {loss[name][-1]:.5f}", flush=True)
        one, ctl, two = runs
        ratio = [s2 / s1 for s1, s2 in zip(speed[one], speed[two])]
        ratio_ctl = [s2 / s1 for s1, s2 in zip(speed[ctl], speed[two])]
        lines.append(f"| {strategy} | {spread(speed[one])} | {spread(speed[ctl])} | {spread(speed[two])} | "
                     f"{spread(ratio, '{:.2f}')}x | {spread(ratio_ctl, '{:.2f}')}x | {spread(wall[one], '{:.0f}')} | "
                     f"{spread(wall[two], '{:.0f}')} | {max(abs(l2 - l1) for l1, l2 in zip(loss[one], loss[two])):.1e} |")
    update_section("ddp-cpu", (
        "## Data-parallel fine-tuning: 2 gloo processes vs 1 on this CPU (overhead, not a speed-up)\n\n"
        f"MiniLM (default model), fp32, {len(texts)} default training tweets, global batch 32 (16 per process under "
        f"DDP), {a.steps} optimizer steps, the same rows per step in all; {a.repeats} alternating repeats, "
        "min/median/max. Two processes share the 2 cores one process already uses, so this measures DDP's "
        "overhead (gloo all-reduce of the gradients, half-size batches, a second model copy): at or below 1x is "
        "expected. The default one process runs 2 torch threads; the 1-thread row is a control that separates "
        "the cost of threads contending with the machine's load from DDP's own cost. Training samples/s: the "
        "training loop only; wall s adds torchrun's launch, each rank's imports and model load. |Δ loss|: the "
        "largest difference of the mean train loss, 2 processes vs 1 (2 threads), over the repeats; MiniLM's "
        "dropout (0.1) draws other masks in each process, so it is not expected to vanish (the equivalence test "
        "uses dropout 0).\n\n"
        "| strategy | samples/s, 1 process (2 threads) | 1 process (1 thread) | 2 processes (1 thread each) | "
        "2 procs vs 1 (2 threads) | 2 procs vs 1 (1 thread) | wall s, 1 (2 threads) | wall s, 2 | \\|Δ loss\\| |\n"
        "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n\n"
        "Where the 2-thread column falls far below the 1-thread one, the machine's other load (load average below) "
        "starves the second thread of each parallel region; DDP's own cost is then the 1-thread comparison. On a "
        "machine loaded beyond its cores the scheduler gives each runnable thread a share, so two processes get "
        "more CPU time than one single-threaded process: a figure above 1x there is that share, not a DDP speed-up.\n\n"
        + stamp(" ".join(["python -m benchmarks.ddp_cpu", *(argv if argv is not None else sys.argv[1:])]))))


if __name__ == "__main__":
    main()
