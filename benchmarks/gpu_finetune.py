"""Fine-tuning throughput and accuracy: a plain Hugging Face Trainer vs tuneline's engine, one run.

  python benchmarks/gpu_finetune.py                      # CPU: a small slice; GPU: all rows
  python benchmarks/gpu_finetune.py --prepare .gpu-carry  # on the CPU machine: cleaned data for a GPU run

Configurations, each in its own process (so peak memory is its own):
  trainer      Trainer with its defaults: fp32, batch 32, lr 5e-5, padding to max_length (the HF tutorial)
  engine_full  tuneline full fine-tuning: length-grouped dynamic padding; on CUDA bf16 autocast, fused
               AdamW, batch 512, lr 2e-4 (the reference configuration); on CPU batch 32, lr 5e-5
  engine_lora  tuneline LoRA r=8 on query/value, same batching (lr 5e-4 on CUDA, 5e-4 on CPU)
  engine_auto  the pipeline's default, train.strategy auto: full with bf16 on CUDA, cached partial on CPU
The GPU image has torch/transformers/peft but not pydantic: carry its wheels
(`pip download pydantic -d .gpu-carry/wheels`) and `pip install --no-index --find-links .gpu-carry/wheels pydantic`.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
CONFIGS = ("trainer", "engine_full", "engine_lora", "engine_auto")


def prepare(dest: Path, seed: int = 42) -> None:
    """Clean the default tweets exactly as the pipeline does and write an 80/20 split as JSONL."""
    from tuneline.config import DataConfig, PreprocessConfig
    from tuneline.classification.data import packaged_corpus_path, to_canonical
    from tuneline.tables import read_table
    from tuneline.classification.preprocess import clean_frame
    from sklearn.model_selection import train_test_split

    df, _ = read_table(DataConfig(), packaged_corpus_path())
    df, _ = clean_frame(to_canonical(df, DataConfig(), packaged_corpus_path()), PreprocessConfig(), lossy_source=True)
    labels = sorted(df["label"].unique())
    df["y"] = df["label"].map({l: i for i, l in enumerate(labels)})
    train, test = train_test_split(df, test_size=0.2, stratify=df["y"], random_state=seed)
    dest.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", train), ("test", test)):
        part[["text", "y"]].to_json(dest / f"bench_{name}.jsonl", orient="records", lines=True, force_ascii=False)
    (dest / "bench_labels.json").write_text(json.dumps(labels))


def load(data_dir: Path, rows: int | None, seed: int = 0):
    def read(name):
        with open(data_dir / f"bench_{name}.jsonl", encoding="utf-8") as fh:
            return [json.loads(line) for line in fh]

    train, test = read("train"), read("test")
    if rows:
        rng = random.Random(seed)
        train, test = rng.sample(train, min(rows, len(train))), rng.sample(test, min(max(rows // 4, 200), len(test)))
    return ([r["text"] for r in train], [r["y"] for r in train], [r["text"] for r in test], [r["y"] for r in test],
            json.loads((data_dir / "bench_labels.json").read_text()))


def scores(y_true, y_pred, n):
    import numpy as np

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    f1 = []
    for c in range(n):
        tp = ((y_pred == c) & (y_true == c)).sum()
        p = tp / max((y_pred == c).sum(), 1)
        r = tp / max((y_true == c).sum(), 1)
        f1.append(0.0 if p + r == 0 else 2 * p * r / (p + r))
    return float((y_true == y_pred).mean()), float(np.mean(f1))


def run_trainer(model_dir, tr_x, tr_y, te_x, te_y, labels, epochs, max_length, cuda):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(labels), torch_dtype=torch.float32)

    class DS(torch.utils.data.Dataset):
        def __init__(self, x, y):
            self.enc = tok(x, truncation=True, max_length=max_length, padding="max_length")
            self.y = y

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return {"input_ids": self.enc["input_ids"][i], "attention_mask": self.enc["attention_mask"][i], "labels": self.y[i]}

    args = TrainingArguments(output_dir=str(Path(os.environ.get("TMPDIR", "/tmp")) / "bench-trainer"), per_device_train_batch_size=32,
                             per_device_eval_batch_size=128, num_train_epochs=epochs, report_to="none", save_strategy="no",
                             logging_strategy="no", use_cpu=not cuda, disable_tqdm=False)
    trainer = Trainer(model=model, args=args, train_dataset=DS(tr_x, tr_y))
    start = time.perf_counter()
    trainer.train()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    pred = trainer.predict(DS(te_x, te_y)).predictions.argmax(-1)
    return len(tr_x) * epochs / seconds, pred


def run_engine(model_dir, tr_x, tr_y, te_x, te_y, labels, epochs, max_length, cuda, strategy):
    import numpy as np

    from tuneline.config import TrainConfig
    from tuneline.engine.trainer import build_model, predict_proba, train_model

    if cuda:
        cfg = TrainConfig(strategy=strategy, batch_size=512 if strategy == "full" else 128, learning_rate=2e-4 if strategy == "full" else 5e-4,
                          epochs=epochs, max_length=max_length, class_weight="none", warmup_ratio=0.1)
    else:
        cfg = TrainConfig(strategy=strategy, batch_size=32, learning_rate=5e-5 if strategy == "full" else 5e-4,
                          epochs=epochs, max_length=max_length, class_weight="none", warmup_ratio=0.0)
    states = None
    if strategy == "auto":  # the pipeline's default exactly: what `auto` resolves to here, its defaults
        from tuneline.engine import hardware
        from tuneline.engine import prefix

        cfg = hardware.resolve(TrainConfig(epochs=epochs, max_length=max_length))
        strategy = cfg.strategy
    model, tok = build_model(model_dir, labels, cfg, strategy)
    model.float()
    if strategy == "partial" and cfg.prefix_cache:
        states = prefix.compute(model, tok, tr_x, max_length, cfg.freeze_layers, cfg.precision)
    fit = train_model(model, tok, tr_x, np.asarray(tr_y), cfg, desc=strategy,
                      frozen_layers=cfg.freeze_layers if strategy == "partial" else None, states=states)
    proba = predict_proba(fit.model, tok, te_x, max_length, 512)
    return fit.samples_per_s, proba.argmax(1)


def one(config: str, a) -> dict:
    """`a.repeats` trainings of one configuration in this process (fresh model each time); peak memory is the process's."""
    import torch

    cuda = torch.cuda.is_available()
    tr_x, tr_y, te_x, te_y, labels = load(Path(a.data), a.rows if not cuda or a.rows_on_gpu else None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    throughputs, accuracies, f1s = [], [], []
    for _ in range(a.repeats):
        if config == "trainer":
            sps, pred = run_trainer(a.model, tr_x, tr_y, te_x, te_y, labels, a.epochs, a.max_length, cuda)
        else:
            sps, pred = run_engine(a.model, tr_x, tr_y, te_x, te_y, labels, a.epochs, a.max_length, cuda, config.split("_")[1])
        acc, f1 = scores(te_y, pred, len(labels))
        throughputs.append(sps), accuracies.append(acc), f1s.append(f1)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"config": config, "samples_per_s": throughputs, "accuracy": accuracies, "f1_macro": f1s, "peak_gb": peak,
            "peak_kind": "GPU allocated" if cuda else "process RSS", "train_rows": len(tr_x), "test_rows": len(te_x),
            "device": torch.cuda.get_device_name(0) if cuda else "cpu"}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepare", metavar="DIR", help="write the cleaned split into DIR and exit")
    p.add_argument("--data", default=None, help="folder with bench_*.jsonl (default: .gpu-carry, else prepared on the fly)")
    p.add_argument("--model", default=None, help="model folder (default: .gpu-carry/minilm-bf16, else the packaged MiniLM)")
    p.add_argument("--rows", type=int, default=1200, help="training rows on CPU (all rows on CUDA)")
    p.add_argument("--rows-on-gpu", action="store_true", help="apply --rows on CUDA too")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="trainings per configuration (median, min and max are reported)")
    p.add_argument("--only", choices=CONFIGS, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    a = p.parse_args(argv)
    if a.prepare:
        prepare(Path(a.prepare))
        return []
    carry = ROOT / ".gpu-carry"
    if a.data is None:
        a.data = str(carry) if (carry / "bench_train.jsonl").exists() else str(ROOT / ".cache" / "bench")
        if not (Path(a.data) / "bench_train.jsonl").exists():
            prepare(Path(a.data))
    if a.model is None:
        if (carry / "minilm-bf16").is_dir():
            a.model = str(carry / "minilm-bf16")
        else:
            from tuneline.engine.models import resolve_model

            a.model = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    if a.only:
        Path(a.out).write_text(json.dumps(one(a.only, a)))
        return []
    results = []
    for config in CONFIGS:  # one process each: peak memory is per configuration
        out = Path(a.data) / f"result_{config}.json"
        cmd = [sys.executable, __file__, "--only", config, "--out", str(out), "--data", a.data, "--model", a.model,
               "--rows", str(a.rows), "--epochs", str(a.epochs), "--max-length", str(a.max_length), "--repeats", str(a.repeats)] + (["--rows-on-gpu"] if a.rows_on_gpu else [])
        subprocess.run(cmd, check=True)
        results.append(json.loads(out.read_text()))
    table = render(results, a)
    sys.stdout.write(table + "\n")
    if not a.no_write:
        try:
            from benchmarks.report import stamp, update_section
        except ImportError:
            from report import stamp, update_section
        key = "finetune-gpu" if results[0]["device"] != "cpu" else "finetune-cpu"
        update_section(key, f"## Fine-tuning engine vs Hugging Face Trainer ({results[0]['device']})\n\n"
                       + stamp("python benchmarks/gpu_finetune.py " + " ".join(argv if argv is not None else sys.argv[1:])) + "\n" + table)
    return results


def render(results: list[dict], a) -> str:
    from statistics import median

    try:
        from benchmarks.report import spread
    except ImportError:  # run as a script on the GPU machine
        from report import spread

    base = median(results[0]["samples_per_s"])
    lines = [f"Default tweets, {results[0]['train_rows']} training rows, {results[0]['test_rows']} test rows, "
             f"max_length {a.max_length}, {a.epochs} epochs; each configuration trained {a.repeats}× in its own process.\n",
             f"| configuration | samples/s (min/median/max) | × Trainer (median) | accuracy % (median) | macro-F1 % (median) | peak memory ({results[0]['peak_kind']}, GiB) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['config']} | {spread(r['samples_per_s'])} | {median(r['samples_per_s']) / base:.2f} | "
                     f"{100 * median(r['accuracy']):.1f} | {100 * median(r['f1_macro']):.1f} | {r['peak_gb']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
