"""Load a trained adapter folder (the LLM tasks' and summarization's) onto its base for scoring, generation
and serving. The folder holds the peft adapter, the tokenizer and `tuneline_llm.json` (method, the base
reference with its hash, lengths, beta). Imports only torch/transformers/peft.
"""
from __future__ import annotations

import json
from pathlib import Path

from types import SimpleNamespace

from tuneline.engine.lora import ADAPTER_META, load_base, quiet

# Loading for inference: the base unquantized, no remote code (an adapter's base is a known reference).
_LOADING = SimpleNamespace(trust_remote_code=False, quantization="none")


class AdapterError(RuntimeError):
    pass


def read_meta(adapter_dir: Path) -> dict:
    path = Path(adapter_dir) / ADAPTER_META
    if not path.is_file():
        raise AdapterError(f"{adapter_dir}: not a tuneline LLM adapter folder (no {ADAPTER_META})")
    return json.loads(path.read_text(encoding="utf-8"))


def load_adapter(adapter_dir: Path, base_folder: str):
    """(model, tokenizer, meta): the base with the adapter attached, in eval mode, unquantized."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    quiet()
    meta = read_meta(adapter_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    base = load_base(base_folder, _LOADING, meta.get("family", meta["method"]), tokenizer, quantized=False)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).to("cuda" if torch.cuda.is_available() else "cpu").eval()
    return model, tokenizer, meta

