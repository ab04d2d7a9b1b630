"""The summarization task: a LoRA adapter on a causal LM or a seq2seq model, folds grouped by document,
ROUGE through the project's evaluate module, promotion on ROUGE-L with a paired bootstrap over documents."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from tuneline.plugins import (
    AdapterTask, Registration, adapter_registration, fold_done, fold_rows, generation_signature, train_stats, write_eval,
)
from tuneline.storage import atomic_path, read_json, write_json
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


def _meta(c, selection: dict) -> dict:
    s = c.summarization
    return {"base": selection["base"], "instruction": s.instruction, "aspect_instruction": s.aspect_instruction,
            "lora_r": s.lora_r, "lora_alpha": s.lora_alpha, "lora_target_modules": s.targets()}


def _keys(rows: list[dict]) -> list[str]:
    return [r["where"] for r in rows]


class Summarization(AdapterTask):
    name = "summarization"
    package = "tuneline.summarization"
    section, keys_field, groups = "summarization", "keys", "documents"
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
        from tuneline.summarization.data import ACLSUM, ACLSUM_VERSION, PACKAGED_SOURCE, read_aclsum, read_source
        from tuneline.tables import write_raw

        s = c.summarization
        if c.data.source == PACKAGED_SOURCE:
            raw = read_aclsum(s)
            info = {"source": f"{ACLSUM}=={ACLSUM_VERSION}", "test_source": f"{ACLSUM}=={ACLSUM_VERSION} (test split)",
                    "aspects": list(s.aclsum_aspects), "sections": list(s.aclsum_sections)}
        else:
            raw, test = self.read_sources(c, lambda path, split: read_source(c.data, s, path, split))
            info = {"source": c.data.source} | test
        raw = raw.astype({s.document_column: object, s.summary_column: object})
        info |= {"task": "summarization", "format": "jsonl" if c.data.source == PACKAGED_SOURCE else c.data.format}
        write_raw(raw, info, f.raw)
        log.info("ingested %d summarization rows from %s", len(raw), info["source"])
        return {"rows": len(raw), **info}

    def validate(self, c, f) -> dict:
        from tuneline.summarization.validation import validate
        from tuneline.tables import read_raw, source_of

        raw, info = read_raw(f.raw)
        return validate(c.summarization, raw, source_of(info), self.tokenizer(c), f.validation_dir)

    def preprocess(self, c, f) -> dict:
        from tuneline.summarization.preprocess import preprocess
        from tuneline.tables import read_raw

        return preprocess(c.summarization, c.preprocess, read_raw(f.raw)[0], self.tokenizer(c), f.processed_dir)

    def select(self, c, f) -> dict:
        """The base is given (summarization.base_model): check it loads as its family and, causal, has a chat template."""
        from transformers import AutoConfig

        from tuneline.engine.chat import training_chat_template

        s, base = c.summarization, self.base(c)
        config = AutoConfig.from_pretrained(base.folder, trust_remote_code=s.trust_remote_code)
        if s.family == "seq2seq" and not getattr(config, "is_encoder_decoder", False):
            raise ValueError(f"summarization.family=seq2seq but {s.base_model!r} is not an encoder-decoder model "
                             f"({config.model_type}); use family causal")
        if s.family == "causal":
            if getattr(config, "is_encoder_decoder", False):
                raise ValueError(f"summarization.base_model {s.base_model!r} is an encoder-decoder ({config.model_type}); "
                                 "set summarization.family=seq2seq")
            training_chat_template(self.tokenizer(c, base.folder))
        selection = self.selection(c, base, family=s.family)
        write_json(f.selection, selection)
        log.info("summarization base %s (%s, %s)", s.base_model, s.family, base.folder)
        return selection

    def fold_keys(self, c, f) -> list[str]:
        from tuneline.summarization.preprocess import load_rows

        return [r["doc_key"] for r in load_rows(f.train)]

    def run_fold(self, c, f, plan: dict, job: dict) -> dict:
        from tuneline.summarization.model import summarize_with_adapter, train_summarizer
        from tuneline.summarization.preprocess import load_rows
        from tuneline.summarization.scoring import scored

        s, selection = c.summarization, read_json(f.selection)
        train, val = fold_rows(load_rows(f.train), plan, job)
        with tempfile.TemporaryDirectory(prefix="tuneline-fold-") as tmp:
            stats = train_summarizer(selection["resolved"], train, s, Path(tmp), _meta(c, selection))
            out = summarize_with_adapter(Path(tmp), selection["resolved"], val, s.max_new_tokens, s.eval_batch_size)
        metrics, _ = scored(out["summaries"], [r["summary"] for r in val], s)
        return fold_done(job, plan, metrics | train_stats(stats, "train_seconds"))

    def labels(self, c) -> dict[str, str]:
        return {"method": "summarization", "family": c.summarization.family}

    def refit(self, c, f) -> dict:
        """Train on all training rows; summarize the test documents with the adapter and with the bare base;
        ROUGE of both; the per-document scores promotion compares; the table people read."""
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
        metrics |= {f"gain_{t}": tuned[t] - base[t] for t in ROUGE_TYPES} | train_stats(stats, "train_seconds")
        table = [{"document": r["document"][:DOCUMENT_CHARS], "aspect": r["aspect"], "reference": r["summary"],
                  "base_summary": b, "tuned_summary": t, "tuned_rougeL": float(score)}
                 for r, b, t, score in zip(test, out["base_summaries"], out["summaries"], per_row["rougeL"])]
        return write_eval(f, metrics, {TABLE: table, f.eval_scores.name: {"keys": _keys(test)} | {t: v.tolist() for t, v in per_row.items()}})

    # --- registry ---------------------------------------------------------------------------------
    def registered_name(self, c) -> str:
        return c.summarization.model_name()

    def metric(self, c) -> tuple[str, bool]:
        from tuneline.summarization.scoring import GATE_METRIC

        return GATE_METRIC, True

    def registration(self, c, f) -> Registration:
        s, metric = c.summarization, self.metric(c)[0]
        base_value = read_json(f.eval_metrics)[f"base_test_{metric}"]
        return adapter_registration(f, metric, self.labels(c),
                                    read_json(f.eval_dir / TABLE)[: s.table_rows], "summaries_table.json", MODEL_CODE,
                                    _signature(), [f.eval_dir / TABLE], note=f" (base {base_value:.4f})")

    def version_scores(self, c, f, uri: str, name: str, version: str) -> dict:
        """A registered summarizer's per-document ROUGE on this project's test split (on its own base, checked by hash)."""
        from tuneline.summarization.model import summarize_with_adapter
        from tuneline.summarization.preprocess import load_rows
        from tuneline.summarization.scoring import rouge

        s = c.summarization
        with self.champion(uri, name, version, "summarization", "not a summarizer; use a separate "
                           "summarization.registered_model_name") as (adapter, base):
            rows = load_rows(f.test)
            out = summarize_with_adapter(adapter, base, rows, s.max_new_tokens, s.eval_batch_size)
        _, per_row = rouge(out["summaries"], [r["summary"] for r in rows], s)
        return {"keys": _keys(rows), "scores": per_row}

    def gate(self, c, candidate: dict, champion: Optional[dict], champion_error: Optional[str] = None) -> dict:
        """Mean ROUGE-L, better by promote.min_delta and significant by a paired bootstrap over the test documents."""
        from tuneline.summarization.scoring import mean_rouge_l
        from tuneline.tracking.gate import paired_rows_gate

        metric, higher = self.metric(c)
        self.same_rows(candidate, champion, "documents")
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
    return generation_signature(("document", "text", "instruction", "aspect"), "summary")


PLUGIN = Summarization()
