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
import time

from benchmarks.report import command_line, spread, stamp, update_section


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
    train = train.groupby("label_id", group_keys=False).apply(lambda g: g.head(a.rows // len(names)))
    texts, y = train["text"].tolist(), train["label_id"].to_numpy()
    resolved = resolve_model(DEFAULT_MODEL)
    lines = []
    for strategy in a.strategies:
        speed, wall, loss = {1: [], 2: []}, {1: [], 2: []}, {}
        for _ in range(a.repeats):
            for devices in (1, 2):  # alternated, so load changes hit both alike
                cfg = TrainConfig(strategy=strategy, precision="fp32", batch_size=32, max_steps=a.steps, checkpoint_every=None,
                                  devices=devices)
                start = time.perf_counter()
                result = fit(resolved, names, strategy, texts, y, cfg, desc=f"{strategy} x{devices}",
                             frozen_layers=cfg.freeze_layers if strategy == "partial" else None)
                wall[devices].append(time.perf_counter() - start)
                speed[devices].append(result.samples_per_s)
                loss[devices] = result.history[-1]["train_loss"]
                print(f"{strategy} devices={devices}: {result.samples_per_s:.1f} samples/s, {wall[devices][-1]:.0f} s wall, "
                      f"last epoch's train loss {loss[devices]:.5f}", flush=True)
        ratio = [s2 / s1 for s1, s2 in zip(speed[1], speed[2])]
        lines.append(f"| {strategy} | {spread(speed[1])} | {spread(speed[2])} | {spread(ratio, '{:.2f}')}x | "
                     f"{spread(wall[1], '{:.0f}')} | {spread(wall[2], '{:.0f}')} | {abs(loss[2] - loss[1]):.1e} |")
    update_section("ddp-cpu", (
        "## Data-parallel fine-tuning: 2 gloo processes vs 1 on this CPU (overhead, not a speed-up)\n\n"
        f"MiniLM (default model), fp32, {len(texts)} default training tweets, global batch 32 (16 per process under "
        f"DDP), {a.steps} optimizer steps, the same rows per step in both; {a.repeats} alternating repeats, "
        "min/median/max. Two processes share the 2 cores one process already uses, so this measures DDP's "
        "overhead (gloo all-reduce of the gradients, half-size batches, a second model copy): at or below 1x is "
        "expected. Training samples/s: the training loop only; wall s adds torchrun's launch, each rank's imports "
        "and model load. |Δ loss|: the last epoch's mean train loss, 2 processes vs 1 (the last repeat).\n\n"
        "| strategy | samples/s, 1 process | samples/s, 2 processes | 2 vs 1 | wall s, 1 | wall s, 2 | \\|Δ loss\\| |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n\n" + stamp(command_line())))


if __name__ == "__main__":
    main()
