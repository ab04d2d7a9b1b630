"""The MLflow pyfunc flavour of a summarizer: the adapter folder plus a reference to its base (checked
by hash on load, as for the LLM tasks). Input: `document` (or `text`, what `tuneline predict` sends),
optional `instruction` or `aspect` per row -> output `summary`."""
from __future__ import annotations

import pandas as pd

from tuneline.tracking.adapter_model import AdapterModel


class SummarizerModel(AdapterModel):
    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        from types import SimpleNamespace

        from tuneline.summarization.data import instruction_for
        from tuneline.summarization.model import summarize

        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame({"document": list(model_input)})
        column = next((c for c in ("document", "text") if c in model_input.columns), None)
        if column is None:
            raise ValueError(f"input needs a 'document' (or 'text') column; got {list(model_input.columns)}")
        templates = SimpleNamespace(instruction=self.meta["instruction"], aspect_instruction=self.meta["aspect_instruction"])
        rows = [{"document": str(r[column]), "instruction": instruction_for(templates, r)} for r in model_input.to_dict("records")]
        family = self.meta.get("family", "causal")
        limit = self.meta.get("max_document_tokens", 0) + 64 if family == "seq2seq" else None
        max_new = int((params or {}).get("max_new_tokens", self.meta.get("max_new_tokens", 64)))
        return pd.DataFrame({"summary": summarize(self.model, self.tokenizer, family, rows, max_new, 8, limit)})
