"""The fine-tuning default, measured side by side in one run (python -m benchmarks run --suite default):

- `default-strategies`: cached partial vs plain partial vs full fine-tuning on this CPU (samples/s);
- `default-bf16`: bf16 autocast vs fp32 — encoder texts/s, and test accuracy / macro-F1 of the
  frozen-feature head and of cached partial on the default split with the same seed;
- `default-tradeoff`: `tuneline run` wall time vs quality for the default and 1–2 other settings,
  each in a new directory (the default row is the quickstart's measured time).
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from statistics import median

from benchmarks.report import remove_sections, spread, stamp, update_section


def _split():
    """The default split exactly as the pipeline makes it (ingest → validate → preprocess)."""
    import pandas as pd

    from tuneline.config import Config
    from tuneline.pipeline.shell import run_stage

    d = Path(tempfile.mkdtemp(prefix="bench-split-"))
    for name in ("ingest", "validate", "preprocess"):
        run_stage(name, Config(), d)
    train, test = pd.read_parquet(d / "data/processed/train.parquet"), pd.read_parquet(d / "data/processed/test.parquet")
    names = sorted(json.loads((d / "data/processed/label_map.json").read_text()).items(), key=lambda kv: kv[1])
    return train, test, [n for n, _ in names]


def _train(strategy: str, cached: bool, precision: str, texts, y, names, **overrides):
    from tuneline.engine import hardware
    from tuneline.engine import prefix
    from tuneline.config import DEFAULT_MODEL, TrainConfig
    from tuneline.engine.trainer import build_model, train_model
    from tuneline.engine.models import resolve_model

    cfg = hardware.resolve(TrainConfig(strategy=strategy, precision=precision, checkpoint_every=None, **overrides))
    model, tok = build_model(resolve_model(DEFAULT_MODEL), names, cfg, strategy)
    start = time.perf_counter()
    states = prefix.compute(model, tok, texts, cfg.max_length, cfg.freeze_layers, precision) if cached else None
    prefix_s = time.perf_counter() - start
    fit = train_model(model, tok, texts, y, cfg, frozen_layers=cfg.freeze_layers if strategy == "partial" else None, states=states)
    return fit, cfg, prefix_s


def strategies(train, names, rows: int, repeats: int) -> str:
    sample = train.sample(rows, random_state=0)
    texts, y = sample["text"].tolist(), sample["label_id"].to_numpy()
    configs = [("cached partial", "partial", True), ("plain partial", "partial", False), ("full", "full", False)]
    sps, wall = {c[0]: [] for c in configs}, {c[0]: [] for c in configs}
    for _ in range(repeats):  # interleaved: drift in machine load hits every configuration alike
        for label, strategy, cached in configs:
            start = time.perf_counter()
            fit, _, _ = _train(strategy, cached, "bf16", texts, y, names, epochs=1)
            wall[label].append(time.perf_counter() - start)
            sps[label].append(fit.samples_per_s)
    base = median(sps["plain partial"])
    lines = [f"| {label} | {spread(sps[label])} | {median(sps[label]) / base:.2f} | {spread(wall[label])} |" for label, *_ in configs]
    return ("## Fine-tuning default: cached partial vs plain partial vs full (CPU)\n\n"
            f"{rows} default tweets, one epoch, batch 32, max_length 64, precision bf16 (this CPU's default), MiniLM with the "
            f"bottom 4 of 6 layers frozen for partial; {repeats} interleaved repeats. Training samples/s exclude model loading; "
            "wall s includes computing the frozen prefix (cached partial) and loading.\n\n"
            "| configuration | training samples/s (min/median/max) | × plain partial | wall s (min/median/max) |\n|---|---|---|---|\n"
            + "\n".join(lines) + "\n")


def bf16(train, test, names, repeats: int, rows: int = 3000) -> str:

    from tuneline.config import DEFAULT_MODEL
    from tuneline.engine.features import embed
    from tuneline.engine.trainer import predict_proba
    from tuneline.metrics import classification_metrics
    from tuneline.engine.models import load_encoder
    from tuneline.classification.head import LinearHead

    tok, enc = load_encoder(DEFAULT_MODEL)
    probe = train["text"].sample(rows, random_state=1).tolist()
    speed = {"fp32": [], "bf16": []}
    for _ in range(repeats):
        for precision in speed:
            start = time.perf_counter()
            embed(probe, tok, enc, max_length=64, batch_size=128, pooling="mean", precision=precision)
            speed[precision].append(rows / (time.perf_counter() - start))
    from tuneline.engine import hardware
    from tuneline.config import TrainConfig

    y_tr, y_te = train["label_id"].to_numpy(), test["label_id"].to_numpy()
    quality = {}
    for precision in ("fp32", "bf16"):
        X_tr = embed(train["text"].tolist(), tok, enc, max_length=64, batch_size=128, pooling="mean", precision=precision)
        X_te = embed(test["text"].tolist(), tok, enc, max_length=64, batch_size=128, pooling="mean", precision=precision)
        head = LinearHead.fit(X_tr, y_tr, len(names), hardware.resolve(TrainConfig(strategy="feature_extraction")))
        quality[("feature_extraction", precision)] = classification_metrics(y_te, head.predict_proba(X_te))
        fit, cfg, _ = _train("partial", True, precision, train["text"].tolist(), y_tr, names, epochs=1)
        proba = predict_proba(fit.model, fit.tokenizer, test["text"].tolist(), 64, 128, precision=precision)
        quality[("partial", precision)] = classification_metrics(y_te, proba) | {"samples_per_s": fit.samples_per_s}
    rows_md = []
    for strategy in ("feature_extraction", "partial"):
        a, b = quality[(strategy, "fp32")], quality[(strategy, "bf16")]
        rows_md.append(f"| {strategy}{' (cached, all training rows, 1 epoch)' if strategy == 'partial' else ''} | "
                       f"{100 * a['accuracy']:.2f} / {a['f1_macro']:.4f} | {100 * b['accuracy']:.2f} / {b['f1_macro']:.4f} | "
                       f"{100 * (b['accuracy'] - a['accuracy']):+.2f} |"
                       + (f" training {a['samples_per_s']:.0f} vs {b['samples_per_s']:.0f} samples/s |" if "samples_per_s" in a else " |"))
    ratio = median(speed["bf16"]) / median(speed["fp32"])
    return ("## Fine-tuning default: bf16 autocast vs fp32 on this CPU\n\n"
            f"Encoder (MiniLM, all 6 layers, mean pooling) on {rows} tweets, batch 128, {repeats} interleaved repeats: "
            f"fp32 {spread(speed['fp32'], '{:.0f}')} texts/s, bf16 {spread(speed['bf16'], '{:.0f}')} texts/s "
            f"(min/median/max) — **{ratio:.2f}×**.\n\n"
            f"Quality on the default test split ({len(test)} tweets; train {len(train)}), same seed:\n\n"
            "| strategy | fp32 accuracy / macro-F1 | bf16 accuracy / macro-F1 | Δ accuracy (pt) | |\n|---|---|---|---|---|\n"
            + "\n".join(rows_md) + "\n\nGoal: bf16 costs at most 0.5 pt of accuracy. The rule in `tuneline.engine.hardware` is static "
            "(CPU flags avx512_bf16/AMX), not timed at run time.\n")


def tradeoff(settings: dict[str, list[str]]) -> tuple[str, dict]:
    from benchmarks.cpu_suite import sets, timed

    lines, default = [], {}
    for label, overrides in settings.items():
        with tempfile.TemporaryDirectory() as d:
            seconds, rss = timed(["tuneline", "run", *sets(overrides)], Path(d))
            test = json.loads((Path(d) / "metrics" / "test.json").read_text())
            cv = json.loads((Path(d) / "metrics" / "cv.json").read_text())
            rows = json.loads((Path(d) / "data" / "cv" / "comparison.json").read_text())["rows"]
        base = next(r for r in rows if r["strategy"] == "baseline")
        win = next(r for r in rows if r["name"] == cv["winner"])
        vs = win.get("vs_baseline")
        lines.append(f"| {label} | `{' '.join(overrides) or '(defaults)'}` | {seconds / 60:.1f} | {rss:.2f} | {cv['winner']} | "
                     f"{win['metrics']['f1_macro']['mean']:.4f} | {base['metrics']['f1_macro']['mean']:.4f} | "
                     f"{vs['p'] if vs else float('nan'):.2g} | {100 * test['test_accuracy']:.1f} | {test['test_f1_macro']:.4f} |")
        if not overrides:
            default = {"minutes": seconds / 60, **test, "winner": cv["winner"]}
    return ("## Fine-tuning default: quickstart wall time vs quality\n\n"
            "`tuneline run` on all cleaned default tweets, each setting in a new directory, one after another. CV columns are "
            "macro-F1 means over the folds; p is the corrected resampled t-test of the winner against the TF-IDF baseline.\n\n"
            "| setting | overrides | wall min | peak RSS GiB | winner | winner CV F1 | baseline CV F1 | p vs baseline | "
            "test accuracy | test macro-F1 |\n|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n"), default


SETTINGS = {
    "default": [],
    "1 epoch": ["train.epochs=1"],
    "frozen features only": ["select.strategies=[feature_extraction]"],
}


def run(repeats: int, only: set[str] | None) -> None:
    cmd = "python -m benchmarks run --suite default" + (f" --only {' '.join(sorted(only))}" if only else "")
    want = lambda row: only is None or row in only  # noqa: E731
    if only is None:
        remove_sections("default-")
    if want("tradeoff"):
        body, _ = tradeoff(SETTINGS)
        update_section("default-tradeoff", body + "\n" + stamp(cmd))
    if want("strategies") or want("bf16"):
        train, test, names = _split()
        if want("strategies"):
            update_section("default-strategies", strategies(train, names, rows=1500, repeats=repeats) + "\n" + stamp(cmd))
        if want("bf16"):
            update_section("default-bf16", bf16(train, test, names, repeats) + "\n" + stamp(cmd))
