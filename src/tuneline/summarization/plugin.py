"""The summarization task: a LoRA adapter on a causal LM or a seq2seq model, folds grouped by document,
ROUGE through the project's evaluate module, promotion on ROUGE-L with a paired bootstrap over documents."""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from tuneline.plugins import Registration, TaskPlugin, adapter_registration
from tuneline.summarization.config import SummarizationConfig

log = logging.getLogger(__name__)

MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
BASE_KEYS = ("summarization.base_model", "summarization.family", "summarization.trust_remote_code")
COLUMN_KEYS = ("summarization.document_column", "summarization.summary_column", "summarization.instruction_column",
               "summarization.aspect_column")
LENGTH_KEYS = ("summarization.max_document_tokens", "summarization.min_document_tokens", "summarization.max_summary_tokens",
               "summarization.max_truncated_fraction")
TABLE = "summaries.json"
DOCUMENT_CHARS = 2000  # of each document in the MLflow table


def _base(c):
    from tuneline.engine.base_model import resolve_base

    return resolve_base(c.summarization.base_model, "summarization.base_model")


def _tokenizer(folder: str, c):
    from transformers import AutoTokenizer

    from tuneline.engine.models import quiet_transformers

    quiet_transformers()
    return AutoTokenizer.from_pretrained(folder, trust_remote_code=c.summarization.trust_remote_code)


def _meta(c, selection: dict) -> dict:
    s = c.summarization
    return {"base": selection["base"], "instruction": s.instruction, "aspect_instruction": s.aspect_instruction,
            "lora_r": s.lora_r, "lora_alpha": s.lora_alpha, "lora_target_modules": s.targets()}


def _keys(rows: list[dict]) -> list[str]:
    return [r["where"] for r in rows]


def _train_stats(stats: dict) -> dict[str, float]:
    return {"train_samples_per_second": stats["train_samples_per_second"], "train_loss": stats["train_loss"],
            "train_seconds": stats["train_seconds"], "train_examples": float(stats["examples"]), "train_steps": float(stats["steps"])}


class Summarization(TaskPlugin):
    name = "summarization"
    package = "tuneline.summarization"
    sections = {"summarization": SummarizationConfig}
    reads = {
        "ingest": ("data.source", "data.test_source", "data.format", "data.delimiter", "data.encoding", *COLUMN_KEYS,
                   "summarization.aclsum_aspects", "summarization.aclsum_sections"),
        "validate": (*BASE_KEYS, *COLUMN_KEYS, *LENGTH_KEYS),
        "preprocess": (*BASE_KEYS, *COLUMN_KEYS, "summarization.max_document_tokens", "summarization.instruction",
                       "summarization.aspect_instruction", "preprocess.sample_size", "preprocess.seed", "preprocess.test_size"),
        "select": BASE_KEYS,
        "crossval": ("summarization", "cv.k", "cv.seed"),
        "refit": ("summarization",),
        "register": ("summarization", "data.source", "data.test_source", "preprocess.sample_size", "preprocess.seed",
                     "preprocess.test_size", "cv.k", "cv.seed"),
        "promote": ("summarization", "cv.seed"),
    }
    columns = {s: ("summarization.document_column", "summarization.summary_column") for s in ("ingest", "validate", "preprocess")}

    # --- steps ------------------------------------------------------------------------------------
    def source_files(self, c) -> list[Path]:
        from tuneline.summarization.data import PACKAGED_SOURCE, aclsum_files

        if c.data.source == PACKAGED_SOURCE:
            try:
                return list(aclsum_files().values())
            except Exception:  # no wheel yet and no network: ingest says why
                return []
        return super().source_files(c)

    def ingest(self, c, f) -> dict:
        import pandas as pd

        from tuneline.summarization.data import ACLSUM, ACLSUM_VERSION, PACKAGED_SOURCE, read_aclsum, read_source
        from tuneline.tables import write_raw

        s = c.summarization
        if c.data.source == PACKAGED_SOURCE:
            raw = read_aclsum(s)
            info = {"source": f"{ACLSUM}=={ACLSUM_VERSION}", "test_source": f"{ACLSUM}=={ACLSUM_VERSION} (test split)",
                    "aspects": list(s.aclsum_aspects), "sections": list(s.aclsum_sections)}
        else:
            frames = [read_source(c.data, s, Path(c.data.source), "train")]
            info = {"source": c.data.source}
            if c.data.test_source is not None:
                frames.append(read_source(c.data, s, Path(c.data.test_source), "test"))
                info["test_source"] = c.data.test_source
            raw = pd.concat(frames, ignore_index=True)
        raw = raw.astype({s.document_column: object, s.summary_column: object})
        info |= {"task": "summarization", "format": "jsonl" if c.data.source == PACKAGED_SOURCE else c.data.format}
        write_raw(raw, info, f.raw)
        log.info("ingested %d summarization rows from %s", len(raw), info["source"])
        return {"rows": len(raw), **info}

    def validate(self, c, f) -> dict:
        from tuneline.summarization.validation import validate
        from tuneline.tables import read_raw

        raw, info = read_raw(f.raw)
        source = " + ".join(info[k] for k in ("source", "test_source") if info.get(k))
        return validate(c.summarization, raw, source, _tokenizer(_base(c).folder, c), f.validation_dir)

    def preprocess(self, c, f) -> dict:
        from tuneline.summarization.preprocess import preprocess
        from tuneline.tables import read_raw

        raw, _ = read_raw(f.raw)
        return preprocess(c.summarization, c.preprocess, raw, _tokenizer(_base(c).folder, c), f.processed_dir)

    def select(self, c, f) -> dict:
        """The base is given (summarization.base_model): check it loads as its family and, causal, has a chat template."""
        from transformers import AutoConfig

        from tuneline.engine.chat import training_chat_template
        from tuneline.storage import write_json

        s, base = c.summarization, _base(c)
        config = AutoConfig.from_pretrained(base.folder, trust_remote_code=s.trust_remote_code)
        if s.family == "seq2seq" and not getattr(config, "is_encoder_decoder", False):
            raise ValueError(f"summarization.family=seq2seq but {s.base_model!r} is not an encoder-decoder model "
                             f"({config.model_type}); use family causal")
        if s.family == "causal":
            if getattr(config, "is_encoder_decoder", False):
                raise ValueError(f"summarization.base_model {s.base_model!r} is an encoder-decoder ({config.model_type}); "
                                 "set summarization.family=seq2seq")
            training_chat_template(_tokenizer(base.folder, c))
        selection = {"model": s.base_model, "resolved": base.folder, "base": base.ref, "fingerprint": base.ref["sha256"][:16],
                     "strategy": "lora", "task": "summarization", "family": s.family, "rule": "summarization.base_model"}
        write_json(f.selection, selection)
        log.info("summarization base %s (%s, %s)", s.base_model, s.family, base.folder)
        return selection

    def cv_plan(self, c, f) -> dict:
        from tuneline.folds import group_folds
        from tuneline.summarization.preprocess import load_rows

        s = c.summarization
        keys = [r["doc_key"] for r in load_rows(f.train)]
        folds = group_folds(keys, s.cv_mode, c.cv.k, s.holdout_fraction, c.cv.seed, "documents")
        return {"folds": folds, "jobs": [{"fold": i} for i in range(len(folds))], "meta": {"mode": s.cv_mode, "seed": c.cv.seed}}

    def run_fold(self, c, f, plan: dict, job: dict) -> dict:
        from tuneline.storage import read_json
        from tuneline.summarization.model import summarize_with_adapter, train_summarizer
        from tuneline.summarization.preprocess import load_rows
        from tuneline.summarization.scoring import scored

        s, selection, rows = c.summarization, read_json(f.selection), load_rows(f.train)
        fold = plan["folds"][job["fold"]]
        train, val = [rows[j] for j in fold["train"]], [rows[j] for j in fold["val"]]
        with tempfile.TemporaryDirectory(prefix="tuneline-fold-") as tmp:
            stats = train_summarizer(selection["resolved"], train, s, Path(tmp), _meta(c, selection))
            out = summarize_with_adapter(Path(tmp), selection["resolved"], val, s.max_new_tokens, s.eval_batch_size)
        metrics, _ = scored(out["summaries"], [r["summary"] for r in val], s)
        result = metrics | _train_stats(stats)
        log.info("fold %d/%d: %s", job["fold"] + 1, len(plan["folds"]), {k: round(v, 4) for k, v in result.items()})
        return result

    def cv_summary(self, c, f, plan: dict, results: list[dict]):
        from tuneline.metrics import summarize
        from tuneline.storage import read_json
        from tuneline.summarization.scoring import GATE_METRIC

        s, k = c.summarization, len(plan["folds"])
        model = read_json(f.selection)["model"]
        return {"k": k, "mode": s.cv_mode, "name": f"summarization-{s.family}-{Path(model).name}", "model": model,
                "strategy": "lora", "task": "summarization", "family": s.family, "metric": GATE_METRIC,
                "metrics": summarize(results), "fold_metrics": results,
                "folds_note": f"{s.cv_mode}, {k} split{'s' if k > 1 else ''}"}, {}

    def refit(self, c, f) -> dict:
        """Train on all training rows; summarize the test documents with the adapter and with the bare base;
        ROUGE of both; the per-document scores promotion compares; the table people read."""
        from tuneline.storage import atomic_path, read_json, write_json
        from tuneline.summarization.model import summarize_with_adapter, train_summarizer
        from tuneline.summarization.preprocess import load_rows
        from tuneline.summarization.scoring import ROUGE_TYPES, scored

        s, selection = c.summarization, read_json(f.selection)
        train, test = load_rows(f.train), load_rows(f.test)
        with atomic_path(f.model_dir) as tmp:
            tmp.mkdir()
            stats = train_summarizer(selection["resolved"], train, s, tmp, _meta(c, selection))
        out = summarize_with_adapter(f.model_dir, selection["resolved"], test, s.max_new_tokens, s.eval_batch_size, with_base=True)
        references = [r["summary"] for r in test]
        tuned, per_row = scored(out["summaries"], references, s)
        base, _ = scored(out["base_summaries"], references, s)
        metrics = {f"test_{k}": v for k, v in tuned.items()} | {f"base_test_{k}": v for k, v in base.items()}
        metrics |= {f"gain_{t}": tuned[t] - base[t] for t in ROUGE_TYPES} | _train_stats(stats)
        table = [{"document": r["document"][:DOCUMENT_CHARS], "aspect": r["aspect"], "reference": r["summary"],
                  "base_summary": b, "tuned_summary": t, "tuned_rougeL": float(score)}
                 for r, b, t, score in zip(test, out["base_summaries"], out["summaries"], per_row["rougeL"])]
        with atomic_path(f.eval_dir) as tmp:
            tmp.mkdir()
            write_json(tmp / f.eval_metrics.name, metrics)
            write_json(tmp / TABLE, table)
            write_json(tmp / f.eval_scores.name, {"keys": _keys(test)} | {t: v.tolist() for t, v in per_row.items()})
        return metrics

    # --- registry ---------------------------------------------------------------------------------
    def registered_name(self, c) -> str:
        return c.summarization.model_name()

    def metric(self, c) -> tuple[str, bool]:
        from tuneline.summarization.scoring import GATE_METRIC

        return GATE_METRIC, True

    def registration(self, c, f) -> Registration:
        from tuneline.storage import read_json

        s, metric = c.summarization, self.metric(c)[0]
        base_value = read_json(f.eval_metrics)[f"base_test_{metric}"]
        return adapter_registration(f, metric, {"method": "summarization", "family": s.family},
                                    read_json(f.eval_dir / TABLE)[: s.table_rows], "summaries_table.json", MODEL_CODE,
                                    _signature(), [f.eval_dir / TABLE], note=f" (base {base_value:.4f})")

    def candidate_scores(self, c, f) -> dict:
        from tuneline.storage import read_json

        stored = read_json(f.eval_scores)
        keys = stored.pop("keys")
        return {"keys": keys, "scores": {k: np.asarray(v) for k, v in stored.items()}}

    def version_scores(self, c, f, uri: str, name: str, version: str) -> dict:
        """A registered summarizer's per-document ROUGE on this project's test split (on its own base, checked by hash)."""
        from tuneline.engine.adapters import read_meta
        from tuneline.engine.base_model import base_from_reference
        from tuneline.engine.lora import ADAPTER_META
        from tuneline.summarization.model import summarize_with_adapter
        from tuneline.summarization.preprocess import load_rows
        from tuneline.summarization.scoring import rouge
        from tuneline.tracking.promotion import PromotionError
        from tuneline.tracking.runs import client, download_folder

        s = c.summarization
        method = client(uri).get_model_version(name, version).tags.get("method")
        if method != "summarization":
            raise PromotionError(f"{name}: version {version} is a {method!r} model, not a summarizer; "
                                 "use a separate summarization.registered_model_name")
        rows = load_rows(f.test)
        dst = Path(tempfile.mkdtemp(prefix="tuneline-champion-"))
        try:
            adapter = download_folder(uri, name, version, dst, ADAPTER_META)
            out = summarize_with_adapter(adapter, base_from_reference(read_meta(adapter)["base"]).folder, rows,
                                         s.max_new_tokens, s.eval_batch_size)
        finally:
            shutil.rmtree(dst, ignore_errors=True)
        _, per_row = rouge(out["summaries"], [r["summary"] for r in rows], s)
        return {"keys": _keys(rows), "scores": per_row}

    def gate(self, c, candidate: dict, champion: Optional[dict], champion_error: Optional[str] = None) -> dict:
        """Mean ROUGE-L, better by promote.min_delta and significant by a paired bootstrap over the test documents."""
        from tuneline.summarization.scoring import mean_rouge_l
        from tuneline.tracking.gate import paired_rows_gate
        from tuneline.tracking.promotion import PromotionError

        metric, higher = self.metric(c)
        if champion is not None and champion["keys"] != candidate["keys"]:
            raise PromotionError(f"the candidate's scores are not on the documents the champion was re-scored on "
                                 f"({len(candidate['keys'])} vs {len(champion['keys'])}); re-run refit")
        rows = lambda s: {metric: np.asarray(s["scores"][metric], float)}  # noqa: E731
        return paired_rows_gate(metric, mean_rouge_l, rows(candidate), None if champion is None else rows(champion),
                                higher_is_better=higher, min_delta=c.promote.min_delta, alpha=c.promote.alpha,
                                samples=c.promote.bootstrap_samples, seed=c.cv.seed, champion_error=champion_error)

    # --- what people read -------------------------------------------------------------------------
    def summary_lines(self, c, results: dict) -> list[str]:
        reg, test = results["register"], results["refit"]
        return [f"  family        : {c.summarization.family}",
                f"  base model    : {reg['base']['id']} (sha256 {reg['base']['sha256'][:12]}…)",
                "  test ROUGE    : " + ", ".join(f"{t} {test[f'test_{t}']:.4f} (base {test[f'base_test_{t}']:.4f})"
                                                 for t in ("rouge1", "rouge2", "rougeL")),
                f"  training      : {test['train_seconds']:.0f} s ({test['train_samples_per_second']:.2f} samples/s)"]

    def version_columns(self, c) -> dict[str, str]:
        return {"family": "family", "test rougeL": "test.rougeL", "base": "base.id"}


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = [ColSpec("string", c, required=False) for c in ("document", "text", "instruction", "aspect")]
    return ModelSignature(Schema(inputs), Schema([ColSpec("string", "summary")]),
                          params=ParamSchema([ParamSpec("max_new_tokens", "long", 64)]))


PLUGIN = Summarization()
