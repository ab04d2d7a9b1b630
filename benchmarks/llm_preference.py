"""Preference accuracy of the base SmolLM2-135M vs a DPO-tuned LoRA adapter on the 221 held-out
HH-RLHF (harmless) validation pairs, and training/scoring throughput on this machine.

    python benchmarks/llm_preference.py [--train-pairs 96] [--max-length 256] ...

Trains with tuneline's own engine (tuneline.engine.lora: trl DPOTrainer + peft LoRA) on a slice of
train.jsonl, scores with tuneline.llm.metrics, and rewrites only the `llm` section of BENCHMARKS.md
(between `<!-- llm:begin -->` and `<!-- llm:end -->`). Results also go to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HH = REPO.parent / "shared" / "data" / "hh_rlhf_harmless"
BEGIN, END = "<!-- llm:begin -->", "<!-- llm:end -->"
log = logging.getLogger("benchmarks.llm_preference")


def load_pairs(path: Path, cfg, tokenizer, limit: int | None = None, fit: bool = True) -> list[dict]:
    """HH rows -> chat pairs, prompts cut to their latest turns; with `fit`, pairs over max_length are skipped."""
    from tuneline.engine.chat import cut_prompt, pair_tokens
    from tuneline.llm.data import to_messages

    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        prompt = cut_prompt(tokenizer, to_messages(r["prompt"]), cfg.max_prompt_length)
        if fit and pair_tokens(tokenizer, prompt, [r["chosen"], r["rejected"]]) > cfg.max_length:
            continue
        pairs.append({"prompt": prompt, "chosen": r["chosen"].strip(), "rejected": r["rejected"].strip()})
        if limit and len(pairs) == limit:
            break
    return pairs


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}"


def versions() -> str:
    from importlib.metadata import version

    return ", ".join(f"{p} {version(p)}" for p in ("torch", "transformers", "peft", "trl")) + f", Python {platform.python_version()}"


def write_section(path: Path, body: str) -> None:
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    section = f"{BEGIN}\n{body.strip()}\n{END}"
    if BEGIN in text and END in text:
        start, end = text.index(BEGIN), text.index(END) + len(END)
        text = text[:start] + section + text[end:]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


def render(r: dict) -> str:
    """The BENCHMARKS.md section for one run's results (benchmarks/results/llm_preference.json)."""
    a, m, t, base = r["args"], r["metrics"], r["train"], r["base"]
    load = lambda xs: "/".join(f"{x:.1f}" for x in xs)  # noqa: E731
    p, n = m["preference_accuracy"], r["validation_pairs"]
    half = 1.96 * (p * (1 - p) / n) ** 0.5
    verdict = "distinguishable" if abs(p - 0.5) > half else "not distinguishable"
    return f"""## LLM preference tuning: SmolLM2-135M base vs DPO LoRA adapter (HH-RLHF harmless)

Measured {r['date']} on {r['machine']} ({r['device']}, {r['torch_threads']} torch threads);
{r['versions']}.

**No GPU was available in this session**: every number below is CPU-only. The machine was shared
with other work (load average 1/5/15 min: {load(r['load_average_at_start'])} at start,
{load(r['load_average_at_end'])} at the end, on 2 cores), so the throughput is a lower bound for a quiet machine.

Command: `{r['command']}`

- Base: `{base['package']}` `{base['file']}` (sha256 `{base['sha256'][:16]}…`), de-quantized to fp32.
- DPO: LoRA r=8, alpha=16 on q_proj, v_proj; beta={a['beta']}; lr={a['learning_rate']}; batch {a['batch_size']};
  {t['epochs']:.0f} epoch = {t['steps']} steps on the first {t['examples']} pairs of train.jsonl whose prompt (cut to its
  latest turns within {a['max_prompt_length']} tokens) plus the longer reply fit in {a['max_length']} tokens.
- Held out: all {r['validation_pairs']} pairs of validation.jsonl (prompts cut to their latest turns within
  {a['eval_max_prompt_length']} tokens; none dropped).

| model | preference accuracy: implicit reward r = β·log(π/π_ref), r(chosen) > r(rejected), tie = ½ | mean margin r(chosen) − r(rejected) | log-likelihood accuracy: log π(chosen) > log π(rejected) |
|---|---|---|---|
| base SmolLM2-135M-Instruct (π = π_ref) | 0.5000 (every margin is 0 by definition) | 0.0000 | {m['reference_logp_accuracy']:.4f} |
| + DPO LoRA adapter | {m['preference_accuracy']:.4f} | {m['mean_margin']:+.4f} | {m['policy_logp_accuracy']:.4f} |

Throughput on this CPU: training {t['train_samples_per_second']:.2f} pairs/s ({t['train_seconds']:.0f} s for {t['steps']} steps;
each step runs the policy on chosen and rejected and the adapter-disabled reference); held-out scoring
{r['scoring_pairs_per_second']:.2f} pairs/s (policy and reference, chosen and rejected).

With {r['validation_pairs']} pairs the 95% interval of an accuracy near {m['preference_accuracy']:.2f} is about ±{half:.3f}, so the
adapter's preference accuracy is {verdict} from the base's 0.5.

Reading it: the log-likelihood column compares both models on the same footing. A summed log-likelihood
favours the shorter reply, and chosen is the shorter reply in 61% of these validation pairs, so the base's
figure mostly reflects length. This is a small slice trained for a few minutes on a CPU: it shows the
pipeline moves the right quantity, not what a full DPO run reaches. The data are the HH-RLHF harmless
*test* split (shared/data/hh_rlhf_harmless/PROVENANCE.md), so these figures are not comparable with published HH numbers.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-pairs", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--learning-rate", type=float, default=5e-4)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--max-length", type=int, default=256, help="training pairs longer than this are skipped")
    ap.add_argument("--max-prompt-length", type=int, default=192)
    ap.add_argument("--eval-max-prompt-length", type=int, default=384, help="validation prompts: latest turns within this")
    ap.add_argument("--eval-batch-size", type=int, default=8)
    ap.add_argument("--output", default=str(REPO / "BENCHMARKS.md"))
    ap.add_argument("--render-only", action="store_true", help="rewrite the section from benchmarks/results/llm_preference.json")
    args = ap.parse_args(argv)
    if args.render_only:
        write_section(Path(args.output), render(json.loads((REPO / "benchmarks" / "results" / "llm_preference.json").read_text())))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    load_start = os.getloadavg()
    import torch
    from transformers import AutoTokenizer

    from tuneline.engine.base_model import resolve_base
    from tuneline.llm.config import PACKAGED_BASE, LLMConfig
    from tuneline.llm.evaluation import evaluate_adapter
    from tuneline.engine.lora import train_adapter

    cfg = LLMConfig(preference_method="dpo", max_length=args.max_length, max_prompt_length=args.max_prompt_length,
                    batch_size=args.batch_size, epochs=args.epochs, learning_rate=args.learning_rate, beta=args.beta,
                    eval_batch_size=args.eval_batch_size)
    eval_cfg = LLMConfig(max_length=4096, max_prompt_length=args.eval_max_prompt_length)
    base = resolve_base(PACKAGED_BASE)
    tokenizer = AutoTokenizer.from_pretrained(base.folder)
    train = load_pairs(HH / "train.jsonl", cfg, tokenizer, limit=args.train_pairs)
    held_out = load_pairs(HH / "validation.jsonl", eval_cfg, tokenizer, fit=False)
    log.info("%d training pairs (<= %d tokens), %d validation pairs", len(train), cfg.max_length, len(held_out))

    with tempfile.TemporaryDirectory(prefix="tuneline-bench-") as tmp:
        meta = {"task": "preference", "base": base.ref, "beta": cfg.beta}
        stats = train_adapter("dpo", base.folder, train, cfg, Path(tmp), meta)
        start = time.perf_counter()
        ev = evaluate_adapter(Path(tmp), base.folder, held_out, cfg.eval_batch_size)
        score_seconds = time.perf_counter() - start
    m = ev["metrics"]
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(), "versions": versions(),
        "device": "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(), "load_average_at_end": os.getloadavg(), "load_average_at_start": load_start, "base": base.ref, "args": vars(args), "train": stats,
        "validation_pairs": len(held_out), "metrics": m, "scoring_seconds": score_seconds,
        "scoring_pairs_per_second": len(held_out) / score_seconds,
    }
    results_dir = REPO / "benchmarks" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)

    result["command"] = ("python benchmarks/llm_preference.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    (results_dir / "llm_preference.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    body = render(result)
    write_section(Path(args.output), body)
    log.info("wrote the llm section of %s: %s", args.output, json.dumps(m))
    return 0


if __name__ == "__main__":
    sys.exit(main())
