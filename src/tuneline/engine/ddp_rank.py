"""The program each torchrun process of a data-parallel fine-tune runs (tuneline.engine.distributed.launch):
join the process group, build the job's model, train it as one DDP rank; rank 0 writes the result.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from tuneline.config import TrainConfig
from tuneline.engine import distributed
from tuneline.engine.checkpoints import trainable_state
from tuneline.engine.distributed import JOB, RECORD, WEIGHTS
from tuneline.engine.trainer import build_model, train_model
from tuneline.storage import write_json


def _run(folder: Path) -> None:
    job = json.loads((folder / JOB).read_text(encoding="utf-8"))
    cfg = TrainConfig.model_validate(job["cfg"])
    model, tokenizer = build_model(job["resolved"], job["labels"], cfg, job["strategy"])
    val = None if job["val"] is None else (job["val"]["texts"], np.asarray(job["val"]["y"], dtype=np.int64))
    fit = train_model(model, tokenizer, job["texts"], np.asarray(job["y"], dtype=np.int64), cfg, val=val, desc=job["desc"],
                      checkpoint_dir=job["checkpoint_dir"] and Path(job["checkpoint_dir"]), frozen_layers=job["frozen_layers"])
    if distributed.world()[0] == 0:
        save_file(trainable_state(fit.model), str(folder / WEIGHTS))
        record = {k: v for k, v in vars(fit).items() if k not in ("model", "tokenizer")}
        write_json(folder / RECORD, record)  # written last: its presence means the weights are complete


def main(argv: list[str]) -> None:
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s")
    if torch.cuda.is_available():
        torch.cuda.set_device(distributed.device())
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        _run(Path(argv[0]))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
