"""Data-parallel fine-tuning (torch DDP) over train.devices torchrun processes: one per GPU (NCCL), or gloo on
a CPU, with the one-process maths (README, "Data-parallel fine-tuning"). Only rank 0 writes weights,
checkpoints and the record; the engine never logs to MLflow.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
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
               "-m", "tuneline.engine.ddp_rank", folder]
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
