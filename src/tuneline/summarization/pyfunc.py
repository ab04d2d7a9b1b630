"""The MLflow pyfunc flavour of a summarizer: the adapter folder plus a reference to its base (checked
by hash on load, as for the LLM tasks). Input: `document` (or `text`, what `tuneline predict` sends),
optional `instruction` or `aspect` per row -> output `summary`. A document longer than the training
cut (summarization.max_document_tokens, recorded in the adapter's meta) is cut the same way (head)."""
from __future__ import annotations

import pandas as pd

from tuneline.tables import input_frame
from tuneline.tracking.adapter_model import AdapterModel


def input_rows(meta: dict, tokenizer, model_input) -> list[dict]:
    """(document, instruction) per input row, each document cut as the training rows were."""
    from types import SimpleNamespace

    from tuneline.summarization.data import instruction_for
    from tuneline.summarization.preprocess import truncate

    model_input, column = input_frame(model_input, "document", "text")
    templates = SimpleNamespace(instruction=meta["instruction"], aspect_instruction=meta["aspect_instruction"])
    records = model_input.to_dict("records")
    documents = [str(r[column]) for r in records]
    if meta.get("max_document_tokens"):
        documents, _ = truncate(tokenizer, documents, int(meta["max_document_tokens"]))
    return [{"document": d, "instruction": instruction_for(templates, r)} for d, r in zip(documents, records)]


class SummarizerModel(AdapterModel):
    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        from tuneline.summarization.model import summarize

        rows = input_rows(self.meta, self.tokenizer, model_input)
        max_new = int((params or {}).get("max_new_tokens", self.meta.get("max_new_tokens", 64)))
        return pd.DataFrame({"summary": summarize(self.model, self.tokenizer, self.meta, rows, max_new, 8)})
