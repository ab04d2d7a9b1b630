"""LLM fine-tuning: chat SFT and preference tuning (DPO, reward model) with LoRA adapters.

The same eight pipeline steps as the classifier (tuneline.pipeline.shell dispatches here for
task chat_sft / preference). What summarization shares with these tasks (the packaged base, chat
templates, LoRA training, adapters, generation) lives in tuneline.engine; `metrics`, `data` and
`evaluation` here import only torch/transformers/peft/trl, so they run where MLflow, Prefect and DVC
are not installed.
"""
