"""Load a tuneline model folder and predict (torch/transformers only)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from tuneline.features import embed
from tuneline.models import quiet_transformers
from tuneline.training import HEAD_FILE, MODEL_META, LinearHead


class TextClassifier:
    def __init__(self, model_dir: str | Path, batch_size: int = 128):
        quiet_transformers()
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = Path(model_dir)
        meta_path = self.model_dir / MODEL_META
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.model_dir}: not a tuneline model folder (no {MODEL_META})")
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        self.labels: list[str] = self.meta["labels"]
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.encoder = AutoModel.from_pretrained(self.model_dir, use_safetensors=True).eval()
        self.head = LinearHead.load(self.model_dir / HEAD_FILE)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        feats = embed(
            list(texts),
            self.tokenizer,
            self.encoder,
            max_length=self.meta["max_length"],
            batch_size=self.batch_size,
            pooling=self.meta["pooling"],
            desc="predicting",
        )
        return self.head.predict_proba(feats)

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.labels[i] for i in self.predict_proba(texts).argmax(1)]
