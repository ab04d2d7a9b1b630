"""The MLflow pyfunc flavour of an LLM adapter: the adapter folder plus a reference to its base, found and
checked by hash on load (tuneline.engine.base_model.base_from_reference).
- chat models (SFT, DPO): input `prompt` (text, or a JSON list of messages) -> output `response`;
- reward models: input `prompt` and `response` -> output `reward`.
"""
from __future__ import annotations

import json

import pandas as pd

from tuneline.tables import input_frame
from tuneline.tracking.adapter_model import AdapterModel


def _prompt(value):
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(parsed, list) and all(isinstance(m, dict) and "role" in m for m in parsed):
            return parsed
    return value


class ChatAdapterModel(AdapterModel):
    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        model_input, column = input_frame(model_input, "prompt", "text")  # `tuneline predict` sends `text`
        prompts = [_prompt(p) for p in model_input[column]]
        if self.meta["method"] == "reward_model":
            from tuneline.llm.data import to_messages
            from tuneline.llm.metrics import rewards

            if "response" not in model_input.columns:
                raise ValueError("a reward model scores (prompt, response) rows: add a 'response' column")
            messages, responses = [to_messages(p) for p in prompts], list(model_input["response"])
            return pd.DataFrame({"reward": rewards(self.model, self.tokenizer, messages, responses, 8)})
        from tuneline.engine.generation import answer

        max_new_tokens = int((params or {}).get("max_new_tokens", 64))
        return pd.DataFrame({"response": answer(self.model, self.tokenizer, prompts, max_new_tokens)})
