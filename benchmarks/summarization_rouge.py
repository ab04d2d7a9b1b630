"""ROUGE-1/2/L of the base SmolLM2-135M vs a LoRA-tuned adapter on aclsum's test papers (one aspect
by default), with the training time, on this machine.

    python benchmarks/summarization_rouge.py [--aspect outcome] [--sections abstract] [--test-papers 99] ...

Uses the task's own code (tuneline.summarization: aclsum read out of its wheel, head truncation,
SFT with the loss on the summary tokens, generation, the project's ROUGE module with seeded
intervals) and rewrites only the `summarization` section of BENCHMARKS.md. Raw results go to
benchmarks/results/summarization_rouge.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.report import ROOT, rendered_only, stamp, update_section  # noqa: E402

log = logging.getLogger("benchmarks.summarization_rouge")
RESULTS = ROOT / "benchmarks" / "results" / "summarization_rouge.json"


def render(r: dict) -> str:
    a, rows = r["args"], []
    for name, key in (("base SmolLM2-135M-Instruct (no adapter)", "base"), ("+ LoRA SFT adapter", "tuned")):
        m = r[key]
        rows.append(f"| {name} | " + " | ".join(f"{100 * m[t]:.2f} ({100 * m[f'{t}_low']:.1f}–{100 * m[f'{t}_high']:.1f})"
                                                  for t in ("rouge1", "rouge2", "rougeL"))
                    + f" | {m['gen_words_mean']:.1f} |")
    t = r["train"]
    slice_note = ("" if not a.get("train_papers") and r["test_rows"] >= 99 else
                  f"This is a slice of one aspect, not the whole test split: on this shared 2-core CPU one optimizer step of "
                  f"{a['batch_size']} examples took {t['train_seconds'] / max(t['steps'], 1):.0f} s, so the full split was out of "
                  f"reach in the time available. With {r['test_rows']} test documents the intervals are wide; read the "
                  f"rows as a pipeline check that tuning moves ROUGE, not as a result to compare.")
    return f"""## Summarization: SmolLM2-135M base vs LoRA SFT on aclsum ({a['aspect']} aspect)

{r.get('stamp') or stamp(r['command'])}
- Data: aclsum 0.1.2 (read out of its wheel), aspect **{a['aspect']}** only; document = the paper's {' + '.join(a['sections'])}
  sentences, cut to their first {a['max_document_tokens']} tokens ({r['truncated_train']} of {r['train_rows']} training and
  {r['truncated_test']} of {r['test_rows']} test documents were cut). Train: {'the first ' if a.get('train_papers') else ''}{r['train_rows']} papers of aclsum train + val;
  test: the first {r['test_rows']} aclsum test papers. Instruction: "{r['instruction']}".
- Training: LoRA r={a['lora_r']}, alpha={2 * a['lora_r']}, q_proj/v_proj; lr {a['learning_rate']}; batch {a['batch_size']};
  {t['steps']} steps ({a['epochs']} epoch); loss on the summary tokens only. **Training time {t['train_seconds']:.0f} s**
  ({t['train_samples_per_second']:.2f} examples/s) on CPU ({r['device']}, {r['torch_threads']} torch threads).
- Generation: greedy, at most {a['max_new_tokens']} new tokens, batch {a['eval_batch_size']}, bf16 autocast where the CPU has it
  ({r['precision']}); {r['generation_seconds']:.0f} s for base and tuned together.
- ROUGE F ×100 through tuneline's evaluate module (rouge-score, Porter stemmer, offline sentence split), 95% seeded
  bootstrap interval over the {r['test_rows']} test documents in brackets.

| model | ROUGE-1 | ROUGE-2 | ROUGE-L | words per summary (mean) |
|---|---|---|---|---|
{chr(10).join(rows)}

Reference summaries average {r['tuned']['reference_words_mean']:.1f} words. GPU: not measured.
{slice_note}
Published anchors for scale (other data, other models): t5-small fine-tuned on XSum ≈ 28/8/22; flan-t5-small on SAMSum ≈ 43/19/36.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--aspect", default="outcome", choices=["challenge", "approach", "outcome"])
    ap.add_argument("--sections", default="abstract", help="comma-separated: abstract,introduction,conclusion")
    ap.add_argument("--max-document-tokens", type=int, default=256)
    ap.add_argument("--test-papers", type=int, default=99)
    ap.add_argument("--train-papers", type=int, default=None, help="default: all of aclsum train + val")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--learning-rate", type=float, default=5e-4)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--eval-batch-size", type=int, default=16)
    ap.add_argument("--render-only", action="store_true", help="rewrite the section from benchmarks/results/summarization_rouge.json")
    args = ap.parse_args(argv)
    if rendered_only(args, "summarization", render, RESULTS):
        return 0
    import pandas as pd
    import torch
    from transformers import AutoTokenizer

    from tuneline.engine.base_model import PACKAGED_BASE, resolve_base
    from tuneline.engine.hardware import resolve_precision
    from tuneline.summarization.config import SummarizationConfig
    from tuneline.summarization.data import instruction_for, read_aclsum
    from tuneline.summarization.model import summarize_with_adapter, train_summarizer
    from tuneline.summarization.preprocess import truncate
    from tuneline.summarization.scoring import scored

    sections = args.sections.split(",")
    cfg = SummarizationConfig(aclsum_aspects=[args.aspect], aclsum_sections=sections, max_document_tokens=args.max_document_tokens,
                              epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                              lora_r=args.lora_r, lora_alpha=2 * args.lora_r, max_new_tokens=args.max_new_tokens,
                              eval_batch_size=args.eval_batch_size)
    base = resolve_base(PACKAGED_BASE)
    tokenizer = AutoTokenizer.from_pretrained(base.folder)
    raw = read_aclsum(cfg)
    raw["document"], raw["truncated"] = truncate(tokenizer, raw["document"].tolist(), cfg.max_document_tokens)
    raw["instruction"] = [instruction_for(cfg, r) for r in raw.to_dict("records")]
    train = raw[raw["split"] == "train"].head(args.train_papers).to_dict("records")
    test = raw[raw["split"] == "test"].head(args.test_papers).to_dict("records")
    log.info("%d training and %d test documents (%s aspect)", len(train), len(test), args.aspect)
    with tempfile.TemporaryDirectory(prefix="tuneline-bench-") as tmp:
        stats = train_summarizer(base.folder, train, cfg, Path(tmp), {"base": base.ref, "instruction": cfg.instruction,
                                                                       "aspect_instruction": cfg.aspect_instruction})
        start = time.perf_counter()
        out = summarize_with_adapter(Path(tmp), base.folder, test, cfg.max_new_tokens, cfg.eval_batch_size, with_base=True)
        gen_seconds = time.perf_counter() - start
    refs = [r["summary"] for r in test]
    tuned, _ = scored(out["summaries"], refs, cfg)
    base_scores, _ = scored(out["base_summaries"], refs, cfg)
    result = {"args": vars(args) | {"sections": sections}, "train": stats, "tuned": tuned, "base": base_scores,
              "train_rows": len(train), "test_rows": len(test), "truncated_train": int(sum(r["truncated"] for r in train)),
              "truncated_test": int(sum(r["truncated"] for r in test)), "instruction": test[0]["instruction"],
              "generation_seconds": gen_seconds, "device": "cuda" if torch.cuda.is_available() else "cpu",
              "torch_threads": torch.get_num_threads(), "precision": resolve_precision("auto"),
              "command": "python benchmarks/summarization_rouge.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "examples": pd.DataFrame({"reference": refs[:5], "base": out["base_summaries"][:5], "tuned": out["summaries"][:5]}
                                       ).to_dict("records")}
    result["stamp"] = stamp(result["command"])  # the run's date, commit and load, kept for --render-only
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    update_section("summarization", render(result))
    log.info("tuned %s / base %s", {k: round(tuned[k], 4) for k in ("rouge1", "rouge2", "rougeL")},
             {k: round(base_scores[k], 4) for k in ("rouge1", "rouge2", "rougeL")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
