"""python -m benchmarks run --suite cpu|gpu|default [--repeats N] — writes its rows into BENCHMARKS.md."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks")
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("--suite", choices=("cpu", "gpu", "default"), required=True)
    run.add_argument("--repeats", type=int, default=3)
    run.add_argument("--only", nargs="*", help="a subset of rows: cpu: finetune quickstart features rerun quality; "
                     "default: tradeoff strategies bf16")
    a = p.parse_args(argv)
    if a.suite == "gpu":
        from benchmarks import gpu_finetune

        gpu_finetune.main([])
        return 0
    if a.suite == "default":
        from benchmarks import finetune_default

        finetune_default.run(a.repeats, set(a.only) if a.only else None)
        return 0
    from benchmarks import cpu_suite

    cpu_suite.run(a.repeats, set(a.only) if a.only else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
