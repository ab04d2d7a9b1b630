"""The MLflow pyfunc side every LoRA-adapter task shares (chat/preference, summarization): loading a
registered adapter folder onto its base, found from the reference the adapter records and checked
by hash (tuneline.engine.base_model). Each task's model subclasses it and adds `predict`."""
from __future__ import annotations

import mlflow.pyfunc


class AdapterModel(mlflow.pyfunc.PythonModel):
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        from tuneline.engine.adapters import load_adapter, read_meta
        from tuneline.engine.base_model import base_from_reference

        adapter_dir = context.artifacts["adapter_dir"]
        base = base_from_reference(read_meta(adapter_dir)["base"])
        self.model, self.tokenizer, self.meta = load_adapter(adapter_dir, base.folder)
