"""The hand-off's cost for the default model (python -m benchmarks.handoff_overhead).

One run, in one process, with a real sshd on 127.0.0.1 (tests/ssh_remote.py) as the DVC ssh remote:
the pipeline's folder pushes the fine-tune's inputs (handoff.publish), a second folder — the GPU
worker's checkout — pulls and verifies them (handoff.take), runs cross-validation and the refit of
the default params (pushing every checkpoint as it lands) and pushes its outputs (handoff.finish);
the pipeline's folder pulls and verifies them (handoff.collect). Reported: each part's wall time and
push + pull + verify as a fraction of the fine-tune's own time. The server is on the same machine,
so the network is a loopback: what is measured is hashing, DVC's transfer and SFTP, not a WAN.

`--set key=value` adds params overrides (e.g. `preprocess.sample_size=2000` for a quick look).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import ROOT, stamp, update_section

POOL = ["train.work_pool=gpu", "train.handoff=team"]


def _project(dest: Path, url: str) -> Path:
    dest.mkdir(parents=True)
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=dest, check=True)
    subprocess.run(["dvc", "remote", "add", "team", url], cwd=dest, check=True)
    return dest


def measure(overrides: list[str]) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from ssh_remote import start_ssh_server

    from tuneline.config import load_config
    from tuneline.pipeline import handoff
    from tuneline.pipeline.shell import run_stage

    base = Path(tempfile.mkdtemp(prefix="bench-handoff-"))
    server = start_ssh_server(base / "sshd")
    ssh = next(server)
    try:
        os.environ.update(ssh.client_env())
        pipeline_dir, gpu_dir = _project(base / "pipeline", ssh.url("dvc")), _project(base / "gpu", ssh.url("dvc"))
        config = load_config(None, overrides + POOL)
        for name in ("ingest", "validate", "preprocess", "select"):
            run_stage(name, config, pipeline_dir)
        t = {}
        start = time.perf_counter()
        job = handoff.publish(config, pipeline_dir)
        t["push inputs (pipeline)"] = time.perf_counter() - start
        start = time.perf_counter()
        store, worker_config = handoff.take(job, gpu_dir)
        t["pull + verify inputs (worker)"] = time.perf_counter() - start
        pushes: list[float] = []

        def timed(path):
            s = time.perf_counter()
            store.publish_work(path)
            pushes.append(time.perf_counter() - s)

        from tuneline.engine import checkpoints

        start = time.perf_counter()
        with checkpoints.publishing(timed):
            results = {name: run_stage(name, worker_config, store.root) for name in handoff.STEPS}
        t["checkpoint + fold-result pushes (worker)"] = sum(pushes)
        finetune_s = time.perf_counter() - start - sum(pushes)
        start = time.perf_counter()
        handoff.finish(store, worker_config, job, results)
        t["push outputs (worker)"] = time.perf_counter() - start
        start = time.perf_counter()
        handoff.collect(config, pipeline_dir, job)
        t["pull + verify outputs (pipeline)"] = time.perf_counter() - start
        size = sum(f.stat().st_size for f in (ssh.root / "dvc").rglob("*") if f.is_file())
        return {"parts": t, "finetune_s": finetune_s, "pushes": len(pushes), "store_mb": size / 2**20,
                "winner": results["crossval"].get("name")}
    finally:
        next(server, None)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    r = measure(args.overrides)
    overhead = sum(r["parts"].values())
    rows = "\n".join(f"| {k} | {v:.1f} s | {100 * v / r['finetune_s']:.1f} % |" for k, v in r["parts"].items())
    overrides = " ".join(f"`{o}`" for o in args.overrides) or "none (the default params)"
    body = (
        "## Hand-off through an SSH remote: push + pull + verify vs the fine-tune (default model)\n\n"
        "The pipeline's folder and a GPU worker's folder share nothing but a DVC ssh remote (OpenSSH sshd on "
        "127.0.0.1, so a loopback network: hashing, DVC's transfer and SFTP are what is measured). Cross-validation "
        f"and the refit of the default params run in the worker's folder; overrides: {overrides}. "
        f"Winner: {r['winner']}. The remote held {r['store_mb']:.0f} MiB afterwards "
        f"({r['pushes']} checkpoint/fold-result files pushed while training).\n\n"
        "| part | wall time | share of the fine-tune |\n|---|---|---|\n"
        f"{rows}\n"
        f"| **hand-off total** | **{overhead:.1f} s** | **{100 * overhead / r['finetune_s']:.1f} %** |\n"
        f"| fine-tune itself (crossval + refit, less the pushes) | {r['finetune_s']:.1f} s | 100 % |\n\n"
        + stamp("nice python -m benchmarks.handoff_overhead" + "".join(f" --set {o}" for o in args.overrides)))
    update_section("handoff-overhead", body)
    print(body)


if __name__ == "__main__":
    main()
