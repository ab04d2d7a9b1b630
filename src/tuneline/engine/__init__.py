"""The training engine: torch/transformers/peft only (runs on a GPU image without MLflow, Prefect or DVC)."""
