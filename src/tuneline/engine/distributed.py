"""Data-parallel fine-tuning (torch.distributed DDP), launched through torchrun.

With train.devices = N > 1, `trainer.fit` writes the job (model folder, labels, texts, config) to a
temporary folder and runs `python -m torch.distributed.run --standalone --nproc-per-node N -m
tuneline.engine.distributed JOB` on this machine: N processes, one per GPU (NCCL) or, on a CPU,
gloo processes sharing the cores. Each builds the same model (same seed) and trains it with
`trainer.train_model` inside the process group; rank 0 writes the trained weights and the run's
record into the job folder, and the calling process loads them into its own copy of the model.

The maths is the one-process maths: train.batch_size is the GLOBAL batch. Every optimizer step
sees the same rows as in one process, split across the ranks (batching.Shard); each rank's loss
is its rows' class-weighted cross-entropy summed and divided by the weight sum of the whole global
batch (all-reduced), so the averaged gradient is the one-process gradient up to float rounding and
train.learning_rate needs no scaling. Only rank 0 writes checkpoints and results and shows
progress; the engine itself never logs to MLflow (the pipeline's process does, once).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

log = logging.getLogger(__name__)

JOB, WEIGHTS, RECORD = "job.json", "weights.safetensors", "result.json"


class DistributedError(RuntimeError):
    """A data-parallel fine-tune could not start or one of its ranks failed."""


def world() -> tuple[int, int]:
    """(rank, world size) of this process's group; (0, 1) outside one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def device() -> torch.device:
    """This rank's device: its own GPU (LOCAL_RANK) on CUDA, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over the ranks (itself in one process)."""
    if world()[1] > 1:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def from_main(obj):
    """Rank 0's `obj` on every rank (a decision only rank 0 can take, e.g. early stopping)."""
    if world()[1] == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gathered(obj) -> list:
    """Every rank's `obj`, in rank order (on every rank)."""
    if world()[1] == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world()[1]
    dist.all_gather_object(out, obj)
    return out


def check_devices(devices: int) -> None:
    """train.devices fits this machine: at most one process per GPU on CUDA."""
    if torch.cuda.is_available():
        have = torch.cuda.device_count()
        if devices > have:
            raise DistributedError(f"train.devices={devices} but this machine has {have} CUDA device(s); "
                                   f"allowed: 1..{have} (one process per GPU)")
    elif devices > (os.cpu_count() or 1):
        log.warning("train.devices=%d gloo processes on %d CPU cores: they share the cores; expect no speed-up",
                    devices, os.cpu_count() or 1)


def launch(devices: int, job: dict, desc: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Run `job` in `devices` torchrun processes; (the trained weights, rank 0's record)."""
    from safetensors.torch import load_file

    check_devices(devices)
    with tempfile.TemporaryDirectory(prefix="tuneline-ddp-") as folder:
        Path(folder, JOB).write_text(json.dumps(job), encoding="utf-8")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={devices}",
               "-m", "tuneline.engine.distributed", folder]
        env = dict(os.environ)
        if not torch.cuda.is_available():  # gloo processes share the cores (torchrun would give each one thread)
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // devices)))
        log.info("%s: data-parallel over %d processes (%s)", desc, devices, "NCCL" if torch.cuda.is_available() else "gloo")
        rc = subprocess.run(cmd, env=env).returncode
        record, weights = Path(folder, RECORD), Path(folder, WEIGHTS)
        if rc != 0 or not record.is_file():
            raise DistributedError(f"{desc}: the data-parallel fine-tune over train.devices={devices} processes failed "
                                   f"(torchrun exit code {rc}); each rank's error is printed above")
        return load_file(str(weights)), json.loads(record.read_text(encoding="utf-8"))


def _run(folder: Path) -> None:
    """One rank: build the job's model, train it in the process group, rank 0 writes the result."""
    from safetensors.torch import save_file

    from tuneline.config import TrainConfig
    from tuneline.engine.checkpoints import trainable_state
    from tuneline.engine.trainer import build_model, train_model

    job = json.loads((folder / JOB).read_text(encoding="utf-8"))
    cfg = TrainConfig.model_validate(job["cfg"])
    model, tokenizer = build_model(job["resolved"], job["labels"], cfg, job["strategy"])
    val = None if job["val"] is None else (job["val"]["texts"], np.asarray(job["val"]["y"], dtype=np.int64))
    ckpt: Optional[str] = job["checkpoint_dir"]
    fit = train_model(model, tokenizer, job["texts"], np.asarray(job["y"], dtype=np.int64), cfg, val=val, desc=job["desc"],
                      checkpoint_dir=None if ckpt is None else Path(ckpt), frozen_layers=job["frozen_layers"])
    if world()[0] == 0:
        save_file(trainable_state(fit.model), str(folder / WEIGHTS))
        record = {"history": fit.history, "best_epoch": fit.best_epoch, "samples_per_s": fit.samples_per_s,
                  "steps": fit.steps, "resumed_from": fit.resumed_from, "step_losses": fit.step_losses}
        tmp = folder / f".{RECORD}.tmp"
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, folder / RECORD)  # written last: its presence means the weights are complete


def main(argv: list[str]) -> None:
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s")
    if torch.cuda.is_available():
        torch.cuda.set_device(device())
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        _run(Path(argv[0]))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
