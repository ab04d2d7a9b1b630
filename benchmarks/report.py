"""BENCHMARKS.md sections, each rewritten only by the script that owns it (never by hand)."""
from __future__ import annotations

import platform
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nEvery figure below was written by the script named in its section, in one run, with the command shown.\n"


def update_section(key: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def remove_sections(prefix: str, path: Path = BENCHMARKS_MD) -> None:
    """Drop the sections whose key starts with `prefix` (partial runs a full run supersedes)."""
    if not path.exists():
        return
    text = re.sub(r"\n*<!-- (" + re.escape(prefix) + r"[\w-]*):begin -->.*?<!-- \1:end -->\n?", "\n", path.read_text(encoding="utf-8"), flags=re.S)
    path.write_text(text.rstrip() + "\n", encoding="utf-8")


def machine() -> str:
    import os

    try:
        import psutil

        mem = f"{psutil.virtual_memory().total / 2**30:.0f} GiB"
    except ImportError:
        mem = "?"
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {mem} RAM{gpu}, Python {platform.python_version()}"


def versions(*packages: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for p in packages:
        try:
            out.append(f"{p} {version(p)}")
        except PackageNotFoundError:
            pass
    return ", ".join(out)


def stamp(command: str) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    import os

    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; commit {commit or 'unknown'}; "
            f"load average at the end (1/5/15 min): {load} — figures from a loaded machine are not comparable\n"
            f"- machine: {machine()}\n- versions: {versions('torch', 'transformers', 'peft', 'scikit-learn', 'prefect', 'mlflow', 'dvc', 'great-expectations')}\n"
            f"- command: `{command}`\n")


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    """min / median / max of repeated measurements."""
    return "/".join(fmt.format(v) for v in (min(values), median(values), max(values)))


def command_line() -> str:
    """The command as typed: `python -m benchmarks[.<module>] ...` for a module of this package."""
    script = Path(sys.argv[0])
    if script.parent.name == "benchmarks":
        module = "benchmarks" if script.name == "__main__.py" else f"benchmarks.{script.stem}"
        return " ".join(["python -m", module, *sys.argv[1:]])
    return " ".join(["python", *sys.argv])


def rendered_only(args, key: str, render, results: Path) -> bool:
    """With --render-only: rewrite section `key` from the saved `results` and say so (True). Otherwise set up
    a measurement run (logging, offline hub, quiet tokenizers) and return False."""
    import json
    import logging
    import os

    if args.render_only:
        update_section(key, render(json.loads(Path(results).read_text())))
        return True
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return False
