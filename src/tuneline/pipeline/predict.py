"""Batch inference from the registry: a table of texts in, labels and probabilities out."""
from __future__ import annotations

import logging
from pathlib import Path
import pandas as pd

from tuneline.config import DataConfig
from tuneline.tables import DataError, read_table
from tuneline.storage import atomic_path

log = logging.getLogger(__name__)


def write_table(df: pd.DataFrame, path: Path) -> None:
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        elif suffix in (".jsonl", ".ndjson"):
            df.to_json(tmp, orient="records", lines=True, force_ascii=False)
        elif suffix in (".csv", ".tsv"):
            df.to_csv(tmp, index=False, sep="\t" if suffix == ".tsv" else ",")
        else:
            raise DataError(f"{path}: unknown output format {suffix!r}; use .csv, .tsv, .jsonl or .parquet")


def predict_file(uri: str, model_uri: str, input_path: Path, output_path: Path, text_column: str, data_cfg: DataConfig) -> int:
    """Predict every row of `input_path`; the output is the input plus `predicted_label` and `p_<label>`."""
    from tuneline.tracking import runs as tracking

    if output_path.suffix.lower() not in (".parquet", ".jsonl", ".ndjson", ".csv", ".tsv"):
        raise DataError(f"{output_path}: unknown output format; use .csv, .tsv, .jsonl or .parquet")
    df, _ = read_table(data_cfg.model_copy(update={"format": "auto", "delimiter": None}), input_path)
    if text_column not in df.columns:
        raise DataError(f"{input_path}: column {text_column!r} (--text-column) not found; columns present: {list(df.columns)}")
    with tracking.scoped(uri) as mlflow:
        model = mlflow.pyfunc.load_model(model_uri)
    out = model.predict(pd.DataFrame({"text": df[text_column].fillna("").astype(str)}))
    result = pd.concat([df.reset_index(drop=True), out.rename(columns={"label": "predicted_label"})], axis=1)
    write_table(result, output_path)
    log.info("predicted %d rows with %s", len(out), model_uri)
    return len(out)
