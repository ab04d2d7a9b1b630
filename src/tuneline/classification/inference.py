"""Load any tuneline model folder and predict (torch/transformers/peft only)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from tuneline.classification.modelio import ENCODER_DIR, load_classifier, read_meta
from tuneline.engine.hardware import resolve_precision


class TextClassifier:
    def __init__(self, model_dir: str | Path, batch_size: int = 128):
        self.model_dir = Path(model_dir)
        self.meta = read_meta(self.model_dir)
        self.labels: list[str] = self.meta["labels"]
        self.batch_size = batch_size
        # a model trained in fp32 predicts in fp32; a bf16 one in bf16 where this machine runs it natively
        self.precision = "fp32" if self.meta.get("precision", "fp32") == "fp32" else resolve_precision("auto")
        if self.meta["strategy"] == "feature_extraction":
            from tuneline.engine.models import load_encoder
            from tuneline.classification.head import HEAD_FILE, LinearHead

            # folders registered before format 2 keep the encoder at the top
            encoder_dir = self.model_dir / ENCODER_DIR if (self.model_dir / ENCODER_DIR).is_dir() else self.model_dir
            self.tokenizer, self.encoder = load_encoder(str(encoder_dir))  # safetensors only, no remote code
            self.head = LinearHead.load(self.model_dir / HEAD_FILE)
        elif self.meta["strategy"] == "baseline":
            from tuneline.classification.baseline import TfidfClassifier

            self.baseline = TfidfClassifier.load(self.model_dir)
        else:
            self.model, self.tokenizer = load_classifier(self.model_dir, self.meta)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if self.meta["strategy"] == "feature_extraction":
            from tuneline.engine.features import embed

            feats = embed(texts, self.tokenizer, self.encoder, max_length=self.meta["max_length"], batch_size=self.batch_size,
                          pooling=self.meta["pooling"], precision=self.precision, desc="predicting")
            return self.head.predict_proba(feats)
        if self.meta["strategy"] == "baseline":
            return self.baseline.predict_proba(texts)
        from tuneline.engine.trainer import predict_proba

        return predict_proba(self.model, self.tokenizer, texts, self.meta["max_length"], self.batch_size, precision=self.precision)

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.labels[i] for i in self.predict_proba(texts).argmax(1)]
