"""The CPU suite: each row a side-by-side measurement in one run, written into BENCHMARKS.md."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from benchmarks.report import ROOT, remove_sections, spread, stamp, update_section

SMALL = ["preprocess.sample_size=600", "cv.k=3"]


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_HOME"))}
    e |= {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}", "HF_HUB_OFFLINE": "1",
          "DVC_NO_ANALYTICS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    return e


def timed(cmd: list[str], cwd: Path, extra_env: dict | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB) of a command, from GNU time."""
    out = cwd / ".time"
    subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", str(out), *cmd], cwd=cwd, env=env() | (extra_env or {}), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds, kb = out.read_text().split()[-2:]
    return float(seconds), int(kb) / 2**20


def sets(overrides: list[str]) -> list[str]:
    return [x for o in overrides for x in ("--set", o)]


def quickstart(repeats: int) -> str:
    tl, hw, tl_mem, hw_mem, metrics = [], [], [], [], {}
    with tempfile.TemporaryDirectory() as cache:
        fresh_machine = {"XDG_CACHE_HOME": cache}  # the 1st run also builds the user-level caches, as on a new machine
        for _ in range(repeats):  # interleaved, so drift in machine load hits both alike
            with tempfile.TemporaryDirectory() as d:
                s, m = timed(["tuneline", "run"], Path(d), fresh_machine)
                tl.append(s), tl_mem.append(m)
                metrics = json.loads((Path(d) / "metrics" / "test.json").read_text())
            with tempfile.TemporaryDirectory() as d:
                s, m = timed([sys.executable, str(ROOT / "benchmarks" / "handwritten_quickstart.py"), d], Path(d), fresh_machine)
                hw.append(s), hw_mem.append(m)
    overhead = median(tl) / median(hw) - 1
    return (f"## 2. CPU quickstart: `tuneline run` vs a hand-written script of the same steps\n\n"
            "Defaults (all cleaned tweets, MiniLM features + the TF-IDF baseline on 5 folds, refit, test), each run in a new "
            "directory. The script (`benchmarks/handwritten_quickstart.py`) does the same computation without Prefect, MLflow, "
            "DVC or Great Expectations. The first tuneline run starts from an empty user cache, as on a new machine, so it "
            "also migrates a new Prefect database and keeps it as the template the later runs copy.\n\n"
            "| | wall s, runs in order | wall s (min/median/max) | peak RSS GiB (min/median/max) |\n|---|---|---|---|\n"
            f"| tuneline run | {', '.join(f'{x:.1f}' for x in tl)} | {spread(tl)} | {spread(tl_mem, '{:.2f}')} |\n"
            f"| hand-written script | {', '.join(f'{x:.1f}' for x in hw)} | {spread(hw)} | {spread(hw_mem, '{:.2f}')} |\n\n"
            f"Orchestration overhead (median/median − 1): **{100 * overhead:.1f}%** (goal ≤ 10%); "
            f"{median(tl) - median(hw):.1f} s of fixed cost: Prefect's temporary server, Great Expectations, MLflow's store and "
            "model logging, the registry; so its share shrinks as data grows.\n\n"
            f"Row 6 (memory): peak RSS of the CPU quickstart is {median(tl_mem):.2f} GiB (median).\n"), metrics


def features(repeats: int, rows: int = 2000, k: int = 5) -> str:
    """Feature-extraction k-fold as tuneline runs it (encode once, every fold reuses the features) beside
    the naive loop (each fold encodes its own train and validation rows). Encoder work is counted, not assumed."""
    import numpy as np
    import pandas as pd
    from sklearn.model_selection import StratifiedKFold

    from tuneline.config import DEFAULT_MODEL, DataConfig, PreprocessConfig, TrainConfig
    from tuneline.classification.data import packaged_corpus_path, to_canonical
    from tuneline.tables import read_table
    from tuneline.engine import hardware
    from tuneline.engine.features import embed
    from tuneline.metrics import classification_metrics
    from tuneline.engine.models import load_encoder
    from tuneline.classification.preprocess import clean_frame
    from tuneline.classification.head import LinearHead

    cfg = hardware.resolve(TrainConfig(strategy="feature_extraction", precision="fp32"))  # the fp32 frozen-feature path
    df, _ = read_table(DataConfig(), packaged_corpus_path())
    df, _ = clean_frame(to_canonical(df, DataConfig(), packaged_corpus_path()), PreprocessConfig(), lossy_source=True)
    df = df.sample(rows, random_state=0)
    texts, y = df["text"].tolist(), pd.factorize(df["label"], sort=True)[0]
    tok, enc = load_encoder(DEFAULT_MODEL)
    folds = list(StratifiedKFold(k, shuffle=True, random_state=0).split(texts, y))
    counter = {"texts": 0, "seconds": 0.0}

    def emb(items):
        start = time.perf_counter()
        out = embed(items, tok, enc, max_length=cfg.max_length, batch_size=cfg.batch_size, pooling="mean")
        counter["texts"] += len(items)
        counter["seconds"] += time.perf_counter() - start
        return out

    def head_f1(Xtr, ytr, Xva, yva):
        return classification_metrics(yva, LinearHead.fit(Xtr, ytr, 3, cfg).predict_proba(Xva))["f1_macro"]

    def cached():
        X = emb(texts)
        return [head_f1(X[tr], y[tr], X[va], y[va]) for tr, va in folds], X

    def per_fold():
        out, X = [], np.zeros((len(texts), enc.config.hidden_size), dtype=np.float32)
        for tr, va in folds:
            Xtr, Xva = emb([texts[i] for i in tr]), emb([texts[i] for i in va])
            X[va] = Xva
            out.append(head_f1(Xtr, y[tr], Xva, y[va]))
        return out, X

    wall = {"cached": [], "per_fold": []}
    encoder_s = {"cached": [], "per_fold": []}
    encoded, f1, feats = {}, {}, {}
    for _ in range(repeats):  # interleaved
        for name, fn in (("cached", cached), ("per_fold", per_fold)):
            counter.update(texts=0, seconds=0.0)
            start = time.perf_counter()
            f1[name], feats[name] = fn()
            wall[name].append(time.perf_counter() - start)
            encoder_s[name].append(counter["seconds"])
            encoded[name] = counter["texts"]
    wall_ratio = median(wall["per_fold"]) / median(wall["cached"])
    enc_ratio = median(encoder_s["per_fold"]) / median(encoder_s["cached"])
    d_f1 = max(abs(a - b) for a, b in zip(f1["cached"], f1["per_fold"]))
    d_x = float(np.abs(feats["cached"] - feats["per_fold"]).max())
    return (f"## 3. Feature-extraction k-fold: cached encoder features vs recomputing them per fold\n\n"
            f"{rows} tweets, k={k}, the default frozen MiniLM + logistic head. Texts through the encoder are counted in the run.\n\n"
            "| | texts encoded | encoder s (min/median/max) | wall s, encoder + 5 head fits (min/median/max) |\n|---|---|---|---|\n"
            f"| cached (tuneline) | {encoded['cached']} | {spread(encoder_s['cached'])} | {spread(wall['cached'])} |\n"
            f"| recompute per fold | {encoded['per_fold']} | {spread(encoder_s['per_fold'])} | {spread(wall['per_fold'])} |\n\n"
            f"Encoder work: **{encoded['per_fold'] / encoded['cached']:.2f}× fewer texts** (goal: close to k={k}×) and "
            f"{enc_ratio:.2f}× less encoder time; wall time {wall_ratio:.2f}× less, because the head fits "
            f"(about {median(wall['cached']) - median(encoder_s['cached']):.1f} s here) are the same in both.\n"
            f"Same features either way up to float rounding (the length-sorted batches pad differently): largest |Δ| of a "
            f"feature {d_x:.1e}; largest |Δ| of a fold's macro-F1 {d_f1:.4f}.\n")


def rerun(repeats: int) -> str:
    with tempfile.TemporaryDirectory() as d:
        repo = Path(d) / "repo"
        files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.split()
        for rel in files:
            if (ROOT / rel).is_file():
                (repo / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / rel, repo / rel)
        import yaml

        from tuneline.config import apply_overrides

        params = repo / "params.yaml"
        params.write_text(yaml.safe_dump(apply_overrides(yaml.safe_load(params.read_text()), SMALL), sort_keys=False))
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
        first, _ = timed(["dvc", "repro"], repo)
        noop = [timed(["dvc", "repro"], repo)[0] for _ in range(repeats)]
        flow_dir = Path(d) / "flow"
        flow_dir.mkdir()
        flow_first, _ = timed(["tuneline", "run", *sets(SMALL)], flow_dir)
        flow_again = [timed(["tuneline", "run", *sets(SMALL)], flow_dir)[0] for _ in range(repeats)]
    return (f"## 4. Unchanged rerun\n\n600 sampled tweets, k=3.\n\n| | wall s (min/median/max) |\n|---|---|\n"
            f"| `dvc repro`, first | {first:.1f} |\n| `dvc repro`, nothing changed | {spread(noop)} |\n"
            f"| `tuneline run` (Prefect), first | {flow_first:.1f} |\n| `tuneline run`, unchanged inputs | {spread(flow_again)} |\n\n"
            f"DVC no-op: {100 * median(noop) / first:.1f}% of the first run. Prefect rerun: {100 * median(flow_again) / flow_first:.1f}% "
            "of the first run (task caching: see the orchestration section of README).\n")


def quality(tweets: dict | None) -> str:
    rows = [] if tweets is None else [
        f"| default tweets (3 classes) | {100 * tweets['test_accuracy']:.1f} | {100 * tweets['test_f1_macro']:.1f} | "
        "no published baseline for this corpus; majority class " f"{100 * tweets['test_majority_rate']:.1f} |"]
    shared = ROOT.parent / "shared" / "data"
    cases = {
        "SST-2 (Kim 2014 split)": ("sst2", "Kim 2014 CNN-multichannel 88.1; TF-IDF+LR (PROVENANCE) 81.3; reference MiniLM full FT (Trainer, H200) 89.1"),
        "TREC-6": ("trec6", "Kim 2014 CNN-non-static 93.6; SVM (Silva 2011) 95.0; TF-IDF+LR (PROVENANCE) 88.2"),
    }
    for title, (name, published) in cases.items():
        with tempfile.TemporaryDirectory() as d:
            overrides = [f"data.source={shared / name / 'train.csv'}", f"data.test_source={shared / name / 'test.csv'}",
                         "data.label_column=label", "data.confidence_column=null", "preprocess.mask_urls=false",
                         "preprocess.mask_mentions=false", "preprocess.leakage=drop"]
            timed(["tuneline", "run", *sets(overrides)], Path(d))
            m = json.loads((Path(d) / "metrics" / "test.json").read_text())
            winner = json.loads((Path(d) / "metrics" / "cv.json").read_text())["winner"]
        rows.append(f"| {title} | {100 * m['test_accuracy']:.1f} | {100 * m['test_f1_macro']:.1f} | {published} (winner: {winner}) |")
    return ("## 5. Quality on the test splits (tuneline's CPU defaults: frozen features, `auto` = cached partial, TF-IDF; "
            "the CV winner is tested)\n\n"
            "| dataset | accuracy | macro-F1 | published / reference |\n|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
            "Each row is one `tuneline run` on the embedded defaults (the dataset's train file → its official test file): "
            "MiniLM frozen features, MiniLM with `train.strategy: auto` (on this CPU: top 2 layers + the standard head "
            "over the frozen-prefix cache, bf16, 2 epochs) and the TF-IDF baseline on the same folds.\n")


GPU_COMMAND = ("`bash ../shared/tools/gpu-carry.sh && python benchmarks/gpu_finetune.py --prepare .gpu-carry && "
               "pip download pydantic -d .gpu-carry/wheels`, then on the GPU machine (carry `.gpu-carry`): "
               "`pip install --no-index --find-links .gpu-carry/wheels pydantic && python -m benchmarks run --suite gpu`")


def gpu_rows() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return "## 1 and 6 (GPU). Measured by `--suite gpu`: see the GPU fine-tuning section.\n"
    except ImportError:
        pass
    return ("## 1 and 6 (GPU). Fine-tuning throughput/accuracy on GPU, and peak GPU memory full vs LoRA\n\n"
            "**not measured**: this machine has no GPU. Exact command: " + GPU_COMMAND + ". "
            "It writes the `finetune-gpu` section (samples/s, × Trainer, accuracy, macro-F1, peak GPU memory per configuration). "
            "The CPU counterpart of row 1 is the `finetune-cpu` section, written by this suite. Its `engine_auto` row is "
            "the pipeline's default, `train.strategy: auto`, which resolves to full bf16 fine-tuning on CUDA: "
            "**not measured** either (no GPU was lent to the session that added it).\n")


def run(repeats: int, only: set[str] | None) -> None:
    cmd = "python -m benchmarks run --suite cpu" + (f" --repeats {repeats}" if repeats != 3 else "") + (f" --only {' '.join(sorted(only))}" if only else "")
    sections, durations = [], {}
    start = time.perf_counter()
    want = lambda name: only is None or name in only  # noqa: E731

    def step(name, fn, *args):
        t0 = time.perf_counter()
        print(f"[benchmarks] {name} ...", flush=True)
        out = fn(*args)
        durations[name] = time.perf_counter() - t0
        print(f"[benchmarks] {name} done in {durations[name]:.0f} s", flush=True)
        return out

    if want("finetune"):
        from benchmarks import gpu_finetune

        step("finetune", gpu_finetune.main, ["--rows", "400", "--epochs", "2", "--repeats", str(repeats)])
    tweets = None
    if want("quickstart"):
        text, tweets = step("quickstart", quickstart, repeats)
        sections.append(text)
    if want("features"):
        sections.append(step("features", features, repeats))
    if want("rerun"):
        sections.append(step("rerun", rerun, repeats))
    if want("quality"):
        sections.append(step("quality", quality, tweets))
    sections.append(gpu_rows())
    total = (time.perf_counter() - start) / 60
    per_row = ", ".join(f"{k} {v / 60:.1f}" for k, v in durations.items())
    body = f"# CPU suite\n\n{stamp(cmd)}- suite wall time: {total:.1f} min ({per_row})\n\n" + "\n".join(sections)
    if only is None:
        remove_sections("cpu-suite-")  # partial runs (--only) this full run supersedes
    update_section("cpu-suite" if only is None else "cpu-suite-" + "-".join(sorted(only)), body)
