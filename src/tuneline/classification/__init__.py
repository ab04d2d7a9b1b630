"""The text-classification task plugin."""
