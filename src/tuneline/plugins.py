"""Task plugins: what a task (classification, chat SFT, preference, ...) gives the pipeline shell, which owns
everything the tasks share (tuneline.pipeline.shell).

A plugin is found by its task name: the `tuneline.tasks` entry points of installed packages
(pyproject.toml declares the built-in ones) plus any registered at run time with `register`.
Nothing here imports a plugin's module by name, so a new task lands in its own package without
an edit to the shell, the config or this file.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

import numpy as np

from tuneline.storage import atomic_path, read_json, write_json

log = logging.getLogger(__name__)

ENTRY_POINTS = "tuneline.tasks"

_registered: dict[str, "TaskPlugin"] = {}


@dataclass
class Registration:
    """What the shell logs and registers for a task's refit model (tuneline.tracking.runs)."""

    run_name: str
    python_model: Path  # the models-from-code file MLflow runs to load a version
    model_artifacts: dict[str, str]
    signature: Any
    requirements: list[str]
    description: str
    version_tags: dict[str, str]
    artifacts: list[Path] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    fold_metrics: list[dict] = field(default_factory=list)  # one nested run each, under the parent
    log_children: Optional[Callable[[Any, str, dict[str, str]], None]] = None  # (mlflow, experiment id, lineage tags)
    extra: dict[str, Any] = field(default_factory=dict)  # added to registration.json


def adapter_registration(f, metric: str, labels: dict[str, str], table: list, table_file: str, python_model: Path,
                         signature, artifacts: list[Path], note: str = "") -> Registration:
    """What a LoRA-adapter task registers (chat SFT, preference, summarization): the adapter folder
    with its base's reference, test and CV figures in the description, `labels` ({"method": …, and
    e.g. "family"}) as tags and in registration.json, and `table` (rows people read: generations,
    summaries) as an MLflow table."""
    from datetime import datetime, timezone

    from tuneline.tracking.runs import pinned

    base, cv, test = read_json(f.selection)["base"], read_json(f.cv_summary), read_json(f.eval_metrics)
    base_tags = {f"base.{k}": str(v) for k, v in base.items()}
    value, stats = test[f"test_{metric}"], cv["metrics"][metric]
    kind = labels["method"] + "".join(f" ({v})" for k, v in labels.items() if k != "method")

    def children(mlflow, exp_id: str, lineage: dict[str, str]) -> None:
        if table:
            import pandas as pd

            mlflow.log_table(pd.DataFrame(table), artifact_file=table_file)

    return Registration(
        run_name=f"{'-'.join(labels.values())}-{Path(base['id']).name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}",
        python_model=python_model, model_artifacts={"adapter_dir": str(f.model_dir)}, signature=signature,
        requirements=pinned("torch", "transformers", "peft", "trl", "gguf", "safetensors", "pandas"),
        description=(f"{kind} LoRA adapter on {base['id']} (sha256 {base['sha256'][:12]}…) — test {metric} {value:.4f}{note}; "
                     f"{cv['mode']} CV {stats['mean']:.4f} ± {stats['std']:.4f}"),
        version_tags={**labels, f"test.{metric}": f"{value:.6f}", **base_tags},
        artifacts=[f.eval_scores, *artifacts],
        tags=base_tags | {f"tuneline.{k}": v for k, v in labels.items()}
        | {"cv.mode": f"{cv['mode']} ({cv['k']} split{'s' if cv['k'] > 1 else ''})"},
        fold_metrics=read_json(f.fold_metrics), log_children=children,
        extra={**labels, "test_metrics": test, "base": base},
    )


class TaskPlugin:
    """The protocol every task implements. Steps take (config, files) — files: the project's paths
    (tuneline.pipeline.stages.Files) — and return a small JSON-able dict.

    `reads[stage]` lists the params each stage reads for this task: section names or dotted keys
    (`cv.k`). dvc.yaml's `params:` and the Prefect cache keys follow it, so a key the task never
    reads re-runs nothing. `sections` are config sections the task adds ({"llm": LLMConfig}).
    """

    name: ClassVar[str]
    package: ClassVar[str]  # the plugin's Python package: its code digest and dvc.yaml's code deps
    sections: ClassVar[dict[str, type]] = {}
    reads: ClassVar[dict[str, tuple[str, ...]]] = {}
    # the params naming the data columns each stage works on (`data.text_column`): an unexpected error
    # in a stage is reported with them (tuneline.pipeline.shell.run_stage)
    columns: ClassVar[dict[str, tuple[str, ...]]] = {}

    # --- the steps (validation guard, clearing, metrics files: the shell's) --------------------
    def ingest(self, config, files) -> dict: raise NotImplementedError
    def validate(self, config, files) -> dict: raise NotImplementedError
    def preprocess(self, config, files) -> dict: raise NotImplementedError
    def select(self, config, files) -> dict: raise NotImplementedError

    def cv_plan(self, config, files) -> dict:
        """{"folds": [...], "jobs": [...]}: jobs are small and independent (any order, any worker)."""
        raise NotImplementedError

    def run_fold(self, config, files, plan: dict, job: dict) -> dict:
        """Fit on one job's training rows and evaluate on its held-out rows."""
        raise NotImplementedError

    def cv_summary(self, config, files, plan: dict, results: list[dict]) -> tuple[dict, dict[str, Any]]:
        """(summary with "metrics" = tuneline.metrics.summarize of the chosen model's folds, and
        "fold_metrics"; extra files for the cv folder as {relative path: JSON value or text})."""
        raise NotImplementedError

    def refit(self, config, files) -> dict:
        """Train on all training rows into files.model_dir, evaluate on the test split into files.eval_dir;
        return the test metrics (metric names as in `metric`, prefixed test_ where the task logs them so)."""
        raise NotImplementedError

    # --- hyperparameter search (tuneline.pipeline.tune; a task without these is never tuned) ----
    def tune_targets(self, config, files, plan: dict) -> list[dict]:
        """What a search may tune in `plan`: [{"name": the candidate, "space": {param: spec} (config.tune.space's
        form), "values": {param: its configured value} (trial 0), "jobs": indices into plan["jobs"] that score it,
        in fold order, "key": what else decides its scores (model, fixed training config, data, folds)}]."""
        return []

    def trial_jobs(self, config, plan: dict, target: dict, params: dict) -> list[dict]:
        """The target's fold jobs trained with `params`: the same folds and training seeds, in fold order."""
        raise NotImplementedError

    def adopt(self, config, plan: dict, target: dict, params: dict, info: dict) -> dict:
        """The plan with the target trained on `params` from now on (what the summary records, refit trains)."""
        raise NotImplementedError

    def tuned_overrides(self, config, params: dict) -> dict[str, Any]:
        """{dotted params.yaml key: value} that pin `params` (`tuneline tune --apply` writes them)."""
        raise NotImplementedError

    def fold_score(self, config, result: dict) -> float:
        """One fold's value of the task's metric (`metric`), which a search optimises in its direction."""
        return float(result["metrics"][self.metric(config)[0]])

    # --- registry -------------------------------------------------------------------------------
    def registered_name(self, config) -> str: raise NotImplementedError
    def metric(self, config) -> tuple[str, bool]:
        """The promotion metric and whether higher is better."""
        raise NotImplementedError
    def registration(self, config, files) -> Registration: raise NotImplementedError

    def candidate_scores(self, config, files) -> Any:
        """Per-row scores of this run's refit model on the project's test split (from refit's outputs)."""
        raise NotImplementedError

    def version_scores(self, config, files, uri: str, name: str, version: str) -> Any:
        """Per-row scores of a registered version on the same rows (the champion, or a CLI promote)."""
        raise NotImplementedError

    def gate(self, config, candidate: Any, champion: Any, champion_error: Optional[str] = None) -> dict:
        """The promotion decision (tuneline.tracking.gate.Decision as a dict); champion None: no champion."""
        raise NotImplementedError

    # --- what people read -------------------------------------------------------------------------
    def source_files(self, config) -> list[Path]:
        """Files outside the project that ingest reads (their hashes key the ingest step)."""
        return [Path(s) for s in (config.data.source, config.data.test_source) if s is not None and Path(s).is_file()]

    def external_inputs(self, config, stage: str) -> list[str]:
        """What stage `stage` reads from outside the project besides the data files: registered models by
        URI (`models:/NAME@champion`) or folders. Their resolved identity (version and run, or content
        hash) goes into the stage's key (tuneline.pipeline.fingerprint); dvc.yaml lists a folder as a dep
        and re-runs a stage reading a registry URI every time (always_changed), as an alias can move."""
        return []

    def summary_lines(self, config, results: dict) -> list[str]:
        """Task-specific lines of the run summary (rich markup)."""
        return []

    def version_columns(self, config) -> dict[str, str]:
        """`tuneline models` columns: {header: version tag}."""
        return {}


class AdapterTask(TaskPlugin):
    """What the LoRA-adapter tasks (chat SFT, preference, summarization) do alike. `section`: their config
    section; `keys_field`: the row keys' name in eval_scores.json; `groups`: what their folds group by."""

    section: ClassVar[str]
    keys_field: ClassVar[str]
    groups: ClassVar[str]

    # {"method": …, and e.g. "family"}: the candidate's name, its tags and registration.json fields
    def labels(self, c) -> dict[str, str]: raise NotImplementedError
    # each training row's group (its prompt, its document): no group is on both sides of a fold
    def fold_keys(self, c, f) -> list[str]: raise NotImplementedError

    def base(self, c):
        from tuneline.engine.base_model import resolve_base

        return resolve_base(getattr(c, self.section).base_model, f"{self.section}.base_model")

    def tokenizer(self, c, folder: Optional[str] = None):  # by default the configured base's
        from transformers import AutoTokenizer

        from tuneline.engine.models import quiet_transformers

        quiet_transformers()
        return AutoTokenizer.from_pretrained(folder or self.base(c).folder, trust_remote_code=getattr(c, self.section).trust_remote_code)

    def selection(self, c, base, **extra) -> dict:
        return {"model": getattr(c, self.section).base_model, "resolved": base.folder, "base": base.ref,
                "fingerprint": base.ref["sha256"][:16], "strategy": "lora", "task": c.task, **extra, "rule": f"{self.section}.base_model"}

    def folds(self, c, keys: list[str]) -> list[dict[str, list[int]]]:  # k folds (cv.k), or one holdout split
        from tuneline.folds import group_folds

        s = getattr(c, self.section)
        return group_folds(keys, s.cv_mode, c.cv.k, s.holdout_fraction, c.cv.seed, self.groups)

    def read_sources(self, c, read: Callable[[Path, str], Any]) -> tuple[Any, dict]:
        """(`read(path, split)` of data.source as "train" and of data.test_source, if set, as "test", concatenated; its info)."""
        import pandas as pd

        splits = {"train": c.data.source, "test": c.data.test_source}
        raw = pd.concat([read(Path(s), split) for split, s in splits.items() if s is not None], ignore_index=True)
        return raw, {} if c.data.test_source is None else {"test_source": c.data.test_source}

    def cv_plan(self, c, f) -> dict:
        folds = self.folds(c, self.fold_keys(c, f))
        return {"folds": folds, "jobs": [{"fold": i} for i in range(len(folds))],
                "meta": {"mode": getattr(c, self.section).cv_mode, "seed": c.cv.seed}}

    def cv_summary(self, c, f, plan: dict, results: list[dict]):
        from tuneline.metrics import summarize

        mode, k, labels = getattr(c, self.section).cv_mode, len(plan["folds"]), self.labels(c)
        model = read_json(f.selection)["model"]
        return {"k": k, "mode": mode, "name": f"{'-'.join(labels.values())}-{Path(model).name}", "model": model,
                "strategy": "lora", "task": c.task, **labels, "metric": self.metric(c)[0], "metrics": summarize(results),
                "fold_metrics": results, "folds_note": f"{mode}, {k} split{'s' if k > 1 else ''}"}, {}

    def candidate_scores(self, c, f) -> dict:
        stored = read_json(f.eval_scores)
        keys = stored.pop(self.keys_field)
        return {"keys": keys, "scores": {k: np.asarray(v) for k, v in stored.items()}}

    @contextlib.contextmanager
    def champion(self, uri: str, name: str, version: str, method: str, otherwise: str):
        """(adapter folder, its base's folder) of a registered version whose `method` tag is `method`,
        downloaded for the block; `otherwise` ends the error for any other method."""
        from tuneline.engine.adapters import read_meta
        from tuneline.engine.base_model import base_from_reference
        from tuneline.engine.lora import ADAPTER_META
        from tuneline.tracking.promotion import PromotionError
        from tuneline.tracking.runs import client, download_folder

        found = client(uri).get_model_version(name, version).tags.get("method")
        if found != method:
            raise PromotionError(f"{name}: version {version} is a {found!r} model, {otherwise}")
        dst = Path(tempfile.mkdtemp(prefix="tuneline-champion-"))
        try:
            adapter = download_folder(uri, name, version, dst, ADAPTER_META)
            yield adapter, base_from_reference(read_meta(adapter)["base"]).folder
        finally:
            shutil.rmtree(dst, ignore_errors=True)

    @staticmethod
    def same_rows(candidate: dict, champion: Optional[dict], rows: str) -> None:
        """The paired gate compares the two on the same `rows`; refit scored the candidate on others."""
        from tuneline.tracking.promotion import PromotionError

        if champion is not None and champion["keys"] != candidate["keys"]:
            raise PromotionError(f"the candidate's scores are not on the {rows} the champion was re-scored on "
                                 f"({len(candidate['keys'])} vs {len(champion['keys'])}); re-run refit")


def fold_rows(rows: list, plan: dict, job: dict) -> tuple[list, list]:  # (training rows, held-out rows)
    fold = plan["folds"][job["fold"]]
    return [rows[j] for j in fold["train"]], [rows[j] for j in fold["val"]]


def fold_done(job: dict, plan: dict, result: dict) -> dict:
    log.info("fold %d/%d: %s", job["fold"] + 1, len(plan["folds"]), {k: round(v, 4) for k, v in result.items()})
    return result


def train_stats(stats: dict, *keys: str) -> dict[str, float]:  # and `keys` of `stats` as they are
    return {"train_samples_per_second": stats["train_samples_per_second"], "train_loss": stats["train_loss"],
            "train_examples": float(stats["examples"]), "train_steps": float(stats["steps"])} | {k: stats[k] for k in keys}


def write_eval(f, metrics: dict, files: dict[str, Any]) -> dict:
    """The refit's eval folder, in one rename: the test metrics and {file name: JSON value}."""
    with atomic_path(f.eval_dir) as tmp:
        tmp.mkdir()
        for name, value in {f.eval_metrics.name: metrics, **files}.items():
            write_json(tmp / name, value)
    return metrics


def generation_signature(inputs: tuple[str, ...], output: str):
    """Optional string columns -> a string column, with max_new_tokens as a param (what `tuneline predict` sends)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(Schema([ColSpec("string", c, required=False) for c in inputs]), Schema([ColSpec("string", output)]),
                          params=ParamSchema([ParamSpec("max_new_tokens", "long", 64)]))


def register(plugin: TaskPlugin) -> None:
    """Add a plugin at run time (tests, notebooks); installed packages use the entry point instead."""
    _registered[plugin.name] = plugin


@functools.lru_cache(maxsize=1)
def _installed() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINTS)}


def names() -> list[str]:
    return sorted(set(_installed()) | set(_registered))


def get(task: str) -> TaskPlugin:
    if task not in _registered:
        ep = _installed().get(task)
        if ep is None:
            raise KeyError(f"task {task!r}: no such task plugin; installed tasks: {', '.join(names())}")
        _registered[task] = ep.load()
    return _registered[task]


def sections() -> dict[str, type]:
    """Config sections added by the installed plugins ({"llm": LLMConfig})."""
    return {name: model for task in names() for name, model in get(task).sections.items()}
