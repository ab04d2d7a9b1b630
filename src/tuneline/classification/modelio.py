"""Model folders on disk: what each strategy saves, and loading any of them back.

Plain Hugging Face tools load a fine-tuned folder as it is (README, "Model folders"); the feature-extraction
and baseline folders have no top-level config.json, so transformers refuses them instead of loading a
random head, and their README.md says how to load them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from tuneline.config import TrainConfig

MODEL_META = "tuneline.json"
ADAPTER_DIR = "adapter"
ENCODER_DIR = "encoder"
CARD = "README.md"
_CARDS = {
    "feature_extraction": "A frozen sentence encoder (`encoder/`, loads with `AutoModel`) whose {pooling}-pooled last hidden "
    "state feeds a logistic head (`head.safetensors`: `weight` [labels, hidden], `bias`). Plain transformers cannot express "
    "this model, so this folder has no top-level config.json. Load it with "
    "`tuneline.classification.inference.TextClassifier(folder)` or the registered MLflow pyfunc.",
    "baseline": "TF-IDF (word 1-2 grams, sublinear tf; `vocabulary.json`, `idf`) and multinomial logistic regression "
    "(`coef`, `intercept` in `tfidf_logreg.safetensors`). Not a transformer: load it with "
    "`tuneline.classification.inference.TextClassifier(folder)` or the registered MLflow pyfunc.",
}


def write_meta(model_dir: Path, strategy: str, labels: Sequence[str], cfg: TrainConfig, base_model: str, **extra) -> None:
    from tuneline.engine.hardware import resolve_precision

    meta = {"format": 2, "strategy": strategy, "base_model": base_model, "pooling": cfg.pooling,
            "max_length": cfg.max_length, "precision": resolve_precision(cfg.precision), "labels": list(labels), **extra}
    (Path(model_dir) / MODEL_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    if strategy in _CARDS:
        card = (f"# tuneline {strategy} model\n\nLabels: {', '.join(labels)}. Base: {base_model}. Max length: {cfg.max_length}.\n\n"
                + _CARDS[strategy].format(pooling=cfg.pooling) + "\n")
        (Path(model_dir) / CARD).write_text(card, encoding="utf-8")


def save_baseline(model_dir: Path, model, labels: Sequence[str], cfg: TrainConfig) -> None:
    model.save(model_dir)
    write_meta(model_dir, "baseline", labels, cfg, "tfidf")


def read_meta(model_dir: Path) -> dict:
    path = Path(model_dir) / MODEL_META
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir}: not a tuneline model folder (no {MODEL_META})")
    return json.loads(path.read_text(encoding="utf-8"))


def save_finetuned(model_dir: Path, model, tokenizer, labels: Sequence[str], cfg: TrainConfig, strategy: str, base_model: str) -> None:
    model_dir = Path(model_dir)
    tokenizer.model_max_length = cfg.max_length  # pipeline(..., truncation=True) then cuts where training did
    tokenizer.save_pretrained(model_dir)
    merged = False
    if strategy == "lora":
        adapter = model_dir / ADAPTER_DIR
        # peft records the base's absolute local path; the id the user configured is portable.
        model.peft_config["default"].base_model_name_or_path = base_model
        model.save_pretrained(adapter, safe_serialization=True, save_embedding_layers=False)
        if cfg.merge_lora:
            model.merge_and_unload().save_pretrained(model_dir, safe_serialization=True)
            merged = True
    else:
        model.save_pretrained(model_dir, safe_serialization=True)
    write_meta(model_dir, strategy, labels, cfg, base_model, merged=merged)


def load_classifier(model_dir: Path, meta: dict):
    """(model, tokenizer) of a fine-tuned folder whose `read_meta` is `meta`; safetensors only."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tuneline.engine.models import quiet_transformers, resolve_model

    quiet_transformers()
    model_dir = Path(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    labels = meta["labels"]
    if meta["strategy"] == "lora" and not meta.get("merged"):
        from peft import PeftModel

        base = AutoModelForSequenceClassification.from_pretrained(
            resolve_model(meta["base_model"]), num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={l: i for i, l in enumerate(labels)}, use_safetensors=True,
        )
        if base.config.pad_token_id is None:
            base.config.pad_token_id = tokenizer.pad_token_id
        model = PeftModel.from_pretrained(base, model_dir / ADAPTER_DIR)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)
    return model.eval(), tokenizer
