"""Run by tests/test_legacy_versions.py in a subprocess whose PYTHONPATH is the src/ of an OLD commit:
register a version with that code, load it back through the registry with that code, and write what
it predicted to a JSON file, so the test can check that the NEW code loads the same version and agrees.

    python tests/legacy_register.py classifier OLD_SRC ROOT OUT_JSON
    python tests/legacy_register.py llm OLD_SRC ROOT OUT_JSON ROWS_JSONL

Imports nothing from tests/: every tuneline module it touches must come from OLD_SRC (checked first).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

# The slice of the packaged data the old pipeline runs on: enough rows for 2 folds, a few seconds of CPU.
CLASSIFIER_OVERRIDES = ["preprocess.sample_size=160", "cv.k=2", "select.strategies=[feature_extraction]",
                        "select.baseline=false", "tracking.registered_model_name=legacy-classifier"]
CLASSIFIER_STAGES = ("ingest", "validate", "preprocess", "select", "crossval", "refit", "register")
PROMPTS = ["What is the capital of France?", json.dumps([{"role": "user", "content": "Name a primary color."}])]


def _old_tuneline(old_src: Path):
    import tuneline

    where = Path(tuneline.__file__).resolve()
    if not where.is_relative_to(old_src.resolve()):
        raise SystemExit(f"tuneline was imported from {where}, not from the old code in {old_src}: check PYTHONPATH")
    return where


def _predicted(model, frame: pd.DataFrame, **kwargs) -> dict:
    python_model = model.unwrap_python_model()
    out = model.predict(frame, **kwargs)
    return {"class": f"{type(python_model).__module__}.{type(python_model).__name__}",
            "class_file": sys.modules[type(python_model).__module__].__file__, "output": out.to_dict(orient="list")}


def classifier(old_src: Path, root: Path) -> dict:
    """The old pipeline's own steps, ingest to register: a feature-extraction version, as a user had it."""
    import mlflow

    from tuneline import tracking
    from tuneline.config import load_config
    from tuneline.stages import run_stage

    config = load_config(None, CLASSIFIER_OVERRIDES)
    for stage in CLASSIFIER_STAGES:
        registration = run_stage(stage, config, root)
    texts = pd.read_parquet(root / config.paths.processed_dir / "test.parquet")["text"].head(8).tolist()
    mlflow.set_tracking_uri(tracking.tracking_uri(root))  # this process only; it ends here
    model = mlflow.pyfunc.load_model(registration["model_uri"])
    return {"registration": registration, "texts": texts, **_predicted(model, pd.DataFrame({"text": texts}))}


def llm(old_src: Path, root: Path, rows_path: Path) -> dict:
    """A chat-SFT LoRA adapter trained (one step) and registered with the old LLM modules."""
    import mlflow

    from tuneline import tracking
    from tuneline.llm import tracking as llm_tracking
    from tuneline.engine.base_model import resolve_base
    from tuneline.llm.config import PACKAGED_BASE, LLMConfig
    from tuneline.llm.data import transcript_to_messages
    from tuneline.engine.lora import train_adapter
    from tuneline.metrics import summarize

    pairs = [json.loads(line) for line in rows_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [transcript_to_messages(p["prompt"]) + [{"role": "assistant", "content": p["chosen"]}] for p in pairs]
    cfg = LLMConfig(max_length=64, max_prompt_length=48, batch_size=len(rows), max_steps=1, learning_rate=1e-3)
    base = resolve_base(PACKAGED_BASE)
    adapter_dir = root / "adapter"
    adapter_dir.mkdir(parents=True)
    meta = {"task": "chat_sft", "base": base.ref, "max_length": cfg.max_length, "max_prompt_length": cfg.max_prompt_length,
            "lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha, "lora_target_modules": list(cfg.lora_target_modules)}
    stats = train_adapter("chat_sft", base.folder, rows, cfg, adapter_dir, meta)
    fold = {"train_loss": stats["train_loss"], "train_steps": float(stats["steps"])}
    uri = tracking.tracking_uri(root)
    registration = llm_tracking.log_llm_run(
        uri, "tuneline", "legacy-chat", root, "legacy-chat-sft", {"llm": cfg.model_dump(mode="json")}, {},
        {"metrics": summarize([fold])}, [fold], {}, [], [], adapter_dir,
        {"task": "chat_sft", "method": "chat_sft", **{f"base.{k}": str(v) for k, v in base.ref.items()}},
        "chat_sft LoRA adapter registered by the old code",
    )
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(registration["model_uri"])
    return {"registration": registration, "prompts": PROMPTS,
            **_predicted(model, pd.DataFrame({"prompt": PROMPTS}), params={"max_new_tokens": 8})}


def main(argv: list[str]) -> None:
    kind, old_src, root, out = argv[0], Path(argv[1]), Path(argv[2]), Path(argv[3])
    where = _old_tuneline(old_src)
    result = classifier(old_src, root) if kind == "classifier" else llm(old_src, root, Path(argv[4]))
    out.write_text(json.dumps({"tuneline_file": str(where), **result}, default=str), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
