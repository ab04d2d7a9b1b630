"""LLM fine-tuning: chat SFT and preference tuning (DPO, reward model, GRPO/RLOO) with LoRA adapters.

`metrics`, `data` and `evaluation` import only torch/transformers/peft/trl, so they run where MLflow, Prefect
and DVC are not installed; what summarization shares with these tasks lives in tuneline.engine.
"""
