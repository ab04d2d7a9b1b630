"""Load any tuneline model folder and predict (torch/transformers/peft only)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from tuneline.modelio import load_classifier, read_meta


class TextClassifier:
    def __init__(self, model_dir: str | Path, batch_size: int = 128):
        self.model_dir = Path(model_dir)
        self.meta = read_meta(self.model_dir)
        self.labels: list[str] = self.meta["labels"]
        self.batch_size = batch_size
        if self.meta["strategy"] == "feature_extraction":
            from transformers import AutoModel, AutoTokenizer

            from tuneline.models import quiet_transformers
            from tuneline.training import HEAD_FILE, LinearHead

            quiet_transformers()
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
            self.encoder = AutoModel.from_pretrained(self.model_dir, use_safetensors=True).eval()
            self.head = LinearHead.load(self.model_dir / HEAD_FILE)
        else:
            self.model, self.tokenizer, _ = load_classifier(self.model_dir)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if self.meta["strategy"] == "feature_extraction":
            from tuneline.features import embed

            feats = embed(texts, self.tokenizer, self.encoder, max_length=self.meta["max_length"],
                          batch_size=self.batch_size, pooling=self.meta["pooling"], desc="predicting")
            return self.head.predict_proba(feats)
        from tuneline.finetune import predict_proba

        return predict_proba(self.model, self.tokenizer, texts, self.meta["max_length"], self.batch_size)

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.labels[i] for i in self.predict_proba(texts).argmax(1)]
