"""Load a trained LLM adapter folder onto its base for scoring, generation and serving.

An adapter folder holds the peft adapter, the tokenizer and `tuneline_llm.json` (method, the base
reference with its hash, lengths, beta). Imports only torch/transformers/peft.
"""
from __future__ import annotations

import json
from pathlib import Path

from tuneline.llm.config import LLMConfig
from tuneline.llm.training import ADAPTER_META, load_base, quiet


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
    base = load_base(base_folder, LLMConfig(), meta["method"], tokenizer, quantized=False)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).to("cuda" if torch.cuda.is_available() else "cpu").eval()
    return model, tokenizer, meta

