"""Batch inference from the registry: a table of texts in, labels and probabilities out."""
from __future__ import annotations

import logging
from pathlib import Path
import pandas as pd

from tuneline.config import DataConfig
from tuneline.tables import DataError, read_table
from tuneline.storage import atomic_path

log = logging.getLogger(__name__)

WRITERS = {  # output suffix -> how a frame is written there
    ".parquet": lambda df, path: df.to_parquet(path, index=False),
    ".jsonl": lambda df, path: df.to_json(path, orient="records", lines=True, force_ascii=False),
    ".ndjson": lambda df, path: df.to_json(path, orient="records", lines=True, force_ascii=False),
    ".csv": lambda df, path: df.to_csv(path, index=False),
    ".tsv": lambda df, path: df.to_csv(path, index=False, sep="\t"),
}


def predict_file(uri: str, model_uri: str, input_path: Path, output_path: Path, text_column: str, data_cfg: DataConfig) -> int:
    """Predict every row of `input_path`; the output is the input plus `predicted_label` and `p_<label>`."""
    from tuneline.tracking import runs as tracking

    write = WRITERS.get(output_path.suffix.lower())
    if write is None:  # before the model is loaded
        raise DataError(f"{output_path}: unknown output format {output_path.suffix!r}; "
                        "use .csv, .tsv, .jsonl or .parquet")
    df, _ = read_table(data_cfg.model_copy(update={"format": "auto", "delimiter": None}), input_path)
    if text_column not in df.columns:
        raise DataError(f"{input_path}: column {text_column!r} (--text-column) not found; columns present: {list(df.columns)}")
    with tracking.scoped(uri) as mlflow:
        model = mlflow.pyfunc.load_model(model_uri)
    out = model.predict(pd.DataFrame({"text": df[text_column].fillna("").astype(str)}))
    result = pd.concat([df.reset_index(drop=True), out.rename(columns={"label": "predicted_label"})], axis=1)
    with atomic_path(output_path) as tmp:
        write(result, tmp)
    log.info("predicted %d rows with %s", len(out), model_uri)
    return len(out)
