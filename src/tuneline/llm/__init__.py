"""LLM fine-tuning: chat SFT and preference tuning (DPO, reward model) with LoRA adapters.

The same eight pipeline steps as the classifier (tuneline.pipeline.shell dispatches here when
`task != classification`). `training`, `metrics`, `generation`, `data` and `modelio` import only
torch/transformers/peft/trl, so they run where MLflow, Prefect and DVC are not installed.
"""
