"""Hyperparameter search inside k-fold CV (issue 16): a 12-trial Optuna search of the CPU fine-tuning
strategy (`partial` over the frozen-prefix cache) beside the untuned default, in one run, on a fixed
5,000-row stratified sample of the default tweets (k=3); then SST-2 (../shared/data/sst2) the same way.

python -m benchmarks.tune_search [--root DIR]          (writes the `tune-search` section of BENCHMARKS.md)
python -m benchmarks.tune_search --report [--root DIR]  (rewrites it from what a run has finished so far)

Per dataset: (A) the crossval step with tune.enabled (trial 0 = the configured values; median pruner
after each fold); (B) refit + test of the tuned winner; (C) the untuned default's crossval (its folds
are trial 0's, reused from the fine-tune work dirs) + refit + test. The section is rewritten after
every phase, so a run stopped early leaves its finished phases, marked partial.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from benchmarks.report import ROOT, stamp, update_section

SHARED = ROOT.parent / "shared" / "data"
COMMON = ["preprocess.sample_size=5000", "cv.k=3", "select.strategies=[partial]", "select.baseline=false"]
# The default partial space, with epochs and trained layers narrowed so that 12 trials x 3 folds fit about an
# hour on 2 CPU cores (a fold of 2 epochs over 2,667 tweets takes ~5 min on this shared machine).
SPACE = ("{learning_rate: {low: 1.0e-5, high: 5.0e-4, log: true}, epochs: {low: 1, high: 2}, batch_size: {choices: [16, 32, 64]}, "
         "warmup_ratio: {low: 0.0, high: 0.2}, weight_decay: {low: 0.0, high: 0.1}, scheduler: {choices: [linear, cosine]}, "
         "freeze_layers: {low: 4, high: 5}}")
TUNE = ["tune.enabled=true", "tune.n_trials=12", "tune.candidates=[partial]", "tune.pruner=median", "tune.seed=0",
        f"tune.space.partial={SPACE}"]
DATASETS = {
    "tweets": [],
    "sst2": [f"data.source={SHARED / 'sst2' / 'train.csv'}", f"data.test_source={SHARED / 'sst2' / 'test.csv'}",
             "data.label_column=label", "data.confidence_column=null", "preprocess.mask_urls=false",
             "preprocess.mask_mentions=false", "preprocess.leakage=drop"],
}
COMMAND = "python -m benchmarks.tune_search"


def _state(root: Path) -> Path:
    return root / "benchmark-state.json"


def _load(root: Path) -> dict:
    return json.loads(_state(root).read_text()) if _state(root).is_file() else {"started": time.time(), "datasets": {}}


def _save(root: Path, state: dict) -> None:
    _state(root).write_text(json.dumps(state, indent=1))


def _study_trials(project: Path) -> list[dict]:
    """The study's trials as stored (also mid-run: the Optuna SQLite file in the project)."""
    import optuna

    db = project / ".cache" / "tune" / "optuna.db"
    if not db.is_file():
        return []
    url = f"sqlite:///{db}"
    names = [s.study_name for s in optuna.get_all_study_summaries(url)]
    out = []
    for name in names:
        for t in optuna.load_study(study_name=name, storage=url).get_trials():
            out.append({"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
                        "folds": len(t.user_attrs.get("folds", [])), "configured": bool(t.user_attrs.get("configured")),
                        "fold_rows": [(r["fold"], r["rows"], r["train_rows"]) for r in t.user_attrs.get("folds", [])],
                        "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
                        if t.datetime_complete and t.datetime_start else None})
    return out


def run_dataset(name: str, root: Path, state: dict) -> None:
    from tuneline.config import load_config
    from tuneline.pipeline.shell import run_stage

    project = root / name
    project.mkdir(parents=True, exist_ok=True)
    record = state["datasets"].setdefault(name, {})
    base = COMMON + DATASETS[name]
    untuned, tuned = load_config(None, base), load_config(None, base + TUNE)
    if "prepare_s" not in record:
        start = time.perf_counter()
        for stage in ("ingest", "validate", "preprocess", "select"):
            run_stage(stage, untuned, project)
        record["prepare_s"] = time.perf_counter() - start
        _save(root, state)
    if "search" not in record:
        start = time.perf_counter()
        summary = run_stage("crossval", tuned, project)
        record["search"] = {"seconds": time.perf_counter() - start, "winner": summary["name"],
                            "tune": json.loads((project / "data/cv/tune.json").read_text()),
                            "comparison": json.loads((project / "data/cv/comparison.json").read_text())["rows"]}
        _save(root, state)
        report(root)
    if "tuned_test" not in record:
        start = time.perf_counter()
        record["tuned_test"] = run_stage("refit", tuned, project) | {"seconds": time.perf_counter() - start}
        _save(root, state)
        report(root)
    if "untuned_test" not in record:
        start = time.perf_counter()
        summary = run_stage("crossval", untuned, project)
        cv_s = time.perf_counter() - start
        record["untuned_cv"] = {"seconds": cv_s, "winner": summary["name"],
                                "comparison": json.loads((project / "data/cv/comparison.json").read_text())["rows"]}
        start = time.perf_counter()
        record["untuned_test"] = run_stage("refit", untuned, project) | {"seconds": time.perf_counter() - start}
        _save(root, state)
        report(root)


def _dataset_section(name: str, project: Path, record: dict) -> list[str]:
    trials = _study_trials(project)
    lines = [f"### {'Default tweets' if name == 'tweets' else 'SST-2 (Kim 2014 split, train.csv → test.csv)'}", ""]
    if not trials:
        return lines + ["Not started.", ""]
    finished = [t for t in trials if t["state"] in ("complete", "pruned")]
    status = "finished" if "search" in record else f"**partial: the run stopped with {len(finished)} of 12 trials finished**"
    lines += [f"Search: {status}" + (f", {record['search']['seconds'] / 60:.1f} min wall" if "search" in record else "") + ".", "",
              "| trial | state | folds run | CV mean macro-F1 | learning rate | epochs | batch | warmup | weight decay | "
              "scheduler | frozen layers | min |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in trials:
        p = t["params"]
        value = f"{t['value']:.4f}" if t["value"] is not None else "-"
        lines.append(f"| {t['number']}{' (configured)' if t['configured'] else ''} | {t['state']} | {t['folds']} | {value} | "
                     f"{p.get('learning_rate', 0):.2e} | {p.get('epochs')} | {p.get('batch_size')} | {p.get('warmup_ratio', 0):.3f} | "
                     f"{p.get('weight_decay', 0):.3f} | {p.get('scheduler')} | {p.get('freeze_layers')} | "
                     f"{(t['seconds'] or 0) / 60:.1f} |")
    complete = [t for t in trials if t["state"] == "complete"]
    trial0 = next((t for t in complete if t["configured"]), None)
    best = max(complete, key=lambda t: t["value"]) if complete else None
    folds = {tuple(map(tuple, t["fold_rows"])) for t in trials if t["fold_rows"]}
    prefixes = all(list(map(tuple, t["fold_rows"])) == list(max(folds, key=len))[:len(t["fold_rows"])] for t in trials)
    lines += ["", f"- every trial on the same folds (fold index, validation rows, training rows): {'yes' if prefixes else 'NO'}",
              f"- pruned after its first fold: {sum(t['state'] == 'pruned' and t['folds'] == 1 for t in trials)} trial(s)"]
    if best and trial0:
        lines.append(f"- best CV mean {best['value']:.4f} (trial {best['number']}) vs trial 0 (untuned default) "
                     f"{trial0['value']:.4f}: Δ {best['value'] - trial0['value']:+.4f} (best of N on the selection folds: "
                     "optimistic; the test split below judges it)")
    for key, label in (("untuned_test", "untuned default (trial 0's values)"), ("tuned_test", "tuned winner")):
        if key in record:
            m = record[key]
            lines.append(f"- test ({label}): accuracy {m['test_accuracy']:.4f}, macro-F1 {m['test_f1_macro']:.4f} "
                         f"(refit {m['seconds'] / 60:.1f} min)")
        else:
            lines.append(f"- test ({label}): not measured (the run did not get there)")
    return lines + [""]


def report(root: Path) -> None:
    state = _load(root)
    body = ["## Hyperparameter search inside k-fold CV (Optuna): 12 trials of cached `partial` vs the untuned default", "",
            "5,000-row stratified sample (preprocess.sample_size=5000, seed 42; 80/20 train/test), k=3, candidates MiniLM "
            "`partial` only (tuned: 12 trials incl. trial 0 = the configured values, TPE seed 0, median pruner after each "
            "fold; so the refit winner is the tuned candidate); the default `partial` search space with epochs narrowed to 1–2 "
            "and frozen layers to 4–5 (of 6) to fit the hour (`SPACE` in the script). Training seeds fixed "
            "(cv.seed + fold) for every trial. One process, phases one after another, on a shared 2-core machine.", ""]
    for name in DATASETS:
        if name == "sst2" and not (SHARED / "sst2" / "train.csv").is_file():
            body += ["### SST-2", "", "Skipped: ../shared/data/sst2 is absent.", ""]
            continue
        body += _dataset_section(name, root / name, state["datasets"].get(name, {}))
    elapsed = (state.get("finished") or time.time()) - state["started"]
    body += [f"Wall time so far: {elapsed / 60:.1f} min" + ("" if state.get("finished") else " (run not finished)") + ".", "",
             stamp(COMMAND)]
    update_section("tune-search", "\n".join(body))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="/tmp/tuneline-bench-tune")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    root = Path(args.root)
    if args.report:
        report(root)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "prefect", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    root.mkdir(parents=True, exist_ok=True)
    state = _load(root)
    _save(root, state)
    for name in DATASETS:
        if name == "sst2" and not (SHARED / "sst2" / "train.csv").is_file():
            continue
        run_dataset(name, root, state)
    state["finished"] = time.time()
    _save(root, state)
    report(root)


if __name__ == "__main__":
    main()
