"""The pipeline shell every task shares: stage table, steps, cache keys, lineage."""
