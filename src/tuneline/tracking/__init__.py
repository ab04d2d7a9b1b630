"""The one owner of MLflow: runs, the registry, the promotion gate (pure) and promotion (registry I/O)."""
