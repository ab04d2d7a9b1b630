"""Summarization: a document -> summary model, a LoRA adapter on a causal LM (SFT on an instruction
turn, loss on the summary tokens only) or on an encoder-decoder (seq2seq), scored with ROUGE through
the project's own `evaluate` module (tuneline_rouge) and promoted on ROUGE-L."""
