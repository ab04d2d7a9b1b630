"""The stage table, defined once: order, what each stage reads and writes, and the file names.

A leaf: it imports nothing from tuneline. dvc.yaml (tuneline.pipeline.dvcfile writes it), the
Prefect flow, the cache keys and every step take their paths from here (tests check dvc.yaml).
"""
from __future__ import annotations

from pathlib import Path

ORDER = ("ingest", "validate", "preprocess", "select", "crossval", "refit", "register", "promote")
PROCESSED = ("train.parquet", "test.parquet", "label_map.json", "report.json")
METRICS = {"crossval": "cv.json", "refit": "test.json"}
# Params every task's stage reads whatever the task: the task name; register also records where
# the run is logged (tracking.experiment); promote reads the shared gate keys.
SHARED_READS = {"register": ("tracking.experiment",), "promote": ("promote.alpha", "promote.min_delta",
                                                                  "promote.bootstrap_samples", "promote.mirror_stages")}


class StageError(RuntimeError):
    """A step cannot run (missing or failed input); the message names the file and what to run."""


def processed_files(paths) -> dict[str, str]:
    return {n: f"{paths.processed_dir}/{n}" for n in PROCESSED}


def metrics_files(paths) -> dict[str, str]:
    return {stage: f"{paths.metrics_dir}/{name}" for stage, name in METRICS.items()}


def outputs(name: str, paths) -> list[str]:
    """What each stage writes, relative to the root: dvc.yaml's `outs:` then `metrics:`."""
    outs = {
        "ingest": [paths.raw],
        "validate": [paths.validation_dir],
        "preprocess": list(processed_files(paths).values()),
        "select": [paths.selection],
        "crossval": [paths.cv_dir],
        "refit": [paths.model_dir, paths.eval_dir],
        "register": [paths.registration],
        "promote": [paths.promotion],
    }[name]
    metric = metrics_files(paths).get(name)
    return outs + ([metric] if metric else [])


def inputs(name: str, paths) -> list[str]:
    """The files each stage reads, relative to the root: dvc.yaml's `deps:` other than code.
    Cache keys and registration keys hash these (tuneline.pipeline.fingerprint)."""
    proc = processed_files(paths)
    return {
        "ingest": [],  # the data source lives outside the project: TaskPlugin.source_files
        "validate": [paths.raw],
        "preprocess": [paths.raw, paths.validation_dir],
        "select": [],
        "crossval": [proc["train.parquet"], proc["label_map.json"], paths.selection],
        "refit": [proc["train.parquet"], proc["test.parquet"], proc["label_map.json"], paths.selection, paths.cv_dir],
        "register": [paths.validation_dir, proc["report.json"], paths.selection, paths.cv_dir, paths.model_dir, paths.eval_dir],
        "promote": [paths.registration, proc["test.parquet"], proc["label_map.json"], paths.eval_dir],
    }[name]


class Files:
    """Every path a step touches, under the project root. File names live here and nowhere else."""

    def __init__(self, paths, root: Path | str = "."):
        self.root, self.paths = Path(root), paths
        p = lambda rel: self.root / rel  # noqa: E731
        self.raw, self.validation_dir, self.processed_dir = p(paths.raw), p(paths.validation_dir), p(paths.processed_dir)
        self.selection, self.cv_dir, self.model_dir, self.eval_dir = p(paths.selection), p(paths.cv_dir), p(paths.model_dir), p(paths.eval_dir)
        self.registration, self.promotion = p(paths.registration), p(paths.promotion)
        self.feature_cache_dir = p(paths.feature_cache_dir)
        self.validation_report, self.validation_page = self.validation_dir / "report.json", self.validation_dir / "report.html"
        self.train, self.test = self.processed_dir / "train.parquet", self.processed_dir / "test.parquet"
        self.label_map, self.preprocess_report = self.processed_dir / "label_map.json", self.processed_dir / "report.json"
        self.folds, self.cv_summary, self.fold_metrics = self.cv_dir / "folds.json", self.cv_dir / "summary.json", self.cv_dir / "fold_metrics.json"
        self.model_params = self.model_dir / "params.yaml"
        self.eval_metrics, self.eval_scores = self.eval_dir / "metrics.json", self.eval_dir / "scores.json"
        self.metrics = {stage: p(rel) for stage, rel in metrics_files(paths).items()}

    def data(self) -> dict[str, Path]:
        """The data files by short name, for lineage hashes (dvc.md5.<name> tags)."""
        return {"raw": self.raw, "train": self.train, "test": self.test, "label_map": self.label_map, "report": self.preprocess_report}


class FoldRun:
    """One plan's fold job as a picklable callable, `run(job)`. A Dask worker that cannot see
    `files.root` runs it `at` a root of its own (tuneline.pipeline.handoff pulls the inputs there)."""

    def __init__(self, plugin, config, files: Files, plan: dict):
        self.plugin, self.config, self.files, self.plan = plugin, config, files, plan

    def __call__(self, job: dict) -> dict:
        return self.plugin.run_fold(self.config, self.files, self.plan, job)

    def at(self, root: Path | str) -> "FoldRun":
        return FoldRun(self.plugin, self.config, Files(self.config.paths, root), self.plan)
