"""Fixtures shared by the summarization tests: tiny slices of the real aclsum sample (read out of its
wheel like the pipeline does), and a tiny randomly initialised T5 with a tokenizer trained here on
that text with `tokenizers` — no download, no hub."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_fixtures import write_jsonl


def aclsum_rows(split: str, papers: int, aspects=("challenge", "outcome"), skip: int = 0) -> list[dict]:
    """document (the abstract), summary and aspect of the first `papers` papers of a split (after `skip`)."""
    from tuneline.summarization.data import aclsum_files

    rows = []
    lines = aclsum_files()[split].read_text(encoding="utf-8").splitlines()[skip:skip + papers]
    for line in lines:
        paper = json.loads(line)
        for aspect in aspects:
            rows.append({"document": " ".join(paper["sentences"]["abstract"]), "summary": paper["summary"][aspect], "aspect": aspect})
    return rows


@pytest.fixture(scope="session")
def aclsum_slice(tmp_path_factory):
    """Train: 6 papers x 2 aspects; test: 3 papers x 2 aspects (abstracts as documents)."""
    d = tmp_path_factory.mktemp("aclsum")
    return write_jsonl(d / "train.jsonl", aclsum_rows("train", 6)), write_jsonl(d / "test.jsonl", aclsum_rows("test", 3))


def build_tiny_t5(folder: Path, texts: list[str]) -> Path:
    """A 2-layer T5 (d_model 32) with random weights and a word-level tokenizer trained on `texts`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(vocab_size=2000, special_tokens=["<pad>", "</s>", "<unk>"]))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    config = T5Config(vocab_size=tok.get_vocab_size(), d_model=32, d_ff=64, d_kv=8, num_layers=2, num_decoder_layers=2,
                      num_heads=4, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    import torch

    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory, aclsum_slice):
    texts = [r[k] for path in aclsum_slice for r in map(json.loads, path.read_text().splitlines()) for k in ("document", "summary")]
    texts.append("Summarize the challenge approach outcome of the following paper in one sentence.")
    return build_tiny_t5(tmp_path_factory.mktemp("t5") / "tiny-t5", texts)
