"""Data-parallel fine-tuning (train.devices): 2 gloo processes launched through torchrun on this CPU
train like one process on the same global batch, resume from their checkpoint, and only rank 0 writes.

The model is a 3-layer BERT of width 32 (MiniLM's tokenizer), fp32, dropout 0; the classes are
imbalanced and class-weighted, so a per-rank mean loss would differ from the global batch's, and the
last batch of each epoch has one row, so one rank trains on a placeholder row that counts zero times.
"""
from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

from tuneline.config import DEFAULT_MODEL, TrainConfig

LABELS = ["a", "b", "c"]
# fp32 and the same rows per step: the processes differ from one only in the order floats are summed
# (two shares, then their sum); over 9 Adam steps that stays below this, on every loss and probability.
TOL = 1e-4
WORDS = {0: ["good", "great", "fine"], 1: ["bad", "awful", "poor"], 2: ["the", "movie", "meh"]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tuneline.engine.models import resolve_model

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, initializer_range=0.2)
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def rows(n_per_class: tuple[int, ...], seed: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)])
    rng.shuffle(y)
    texts = [" ".join(rng.choice(WORDS[int(c)], size=int(rng.integers(2, 10)))) for c in y]
    return texts, y


TRAIN = rows((20, 14, 7), 0)  # 41 rows: 6 batches of 8 per epoch, the last with 1 row
HELD_OUT = rows((6, 6, 6), 1)


def config(strategy: str, devices: int) -> TrainConfig:
    lr = {"full": 1e-3, "partial": 5e-3, "lora": 2e-2}[strategy]
    # 9 steps: a checkpoint every 4 leaves step 8, batch 2 of epoch 2 — a mid-epoch resume point
    return TrainConfig(strategy=strategy, precision="fp32", max_length=16, batch_size=8, max_steps=9, learning_rate=lr,
                       warmup_ratio=0.0, freeze_layers=1, lora_dropout=0.0, seed=3, checkpoint_every=4, devices=devices)


def train(tiny: str, strategy: str, devices: int, checkpoint_dir=None):
    from tuneline.engine.trainer import fit

    frozen = 1 if strategy == "partial" else None
    # one thread per process in both runs: a width-32 model gains nothing from two, and on a loaded
    # 2-core machine a second thread only waits (BENCHMARKS.md, "Data-parallel fine-tuning")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMP_NUM_THREADS", "1")
        return fit(tiny, LABELS, strategy, *TRAIN, config(strategy, devices), desc=f"{strategy} x{devices}",
                   checkpoint_dir=checkpoint_dir, frozen_layers=frozen)


def held_out(result) -> tuple[np.ndarray, dict]:
    from tuneline.engine.trainer import predict_proba
    from tuneline.metrics import classification_metrics

    proba = predict_proba(result.model, result.tokenizer, HELD_OUT[0], 16, 64)
    return proba, classification_metrics(HELD_OUT[1], proba)


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory) -> dict:
    """(strategy, devices) -> (the fit, its checkpoint folder); each trained once for the module."""
    cache: dict = {}

    def get(strategy: str, devices: int):
        if (strategy, devices) not in cache:
            ckpt = tmp_path_factory.mktemp(f"ckpt-{strategy}-{devices}")
            cache[strategy, devices] = train(tiny, strategy, devices, ckpt), ckpt
        return cache[strategy, devices]

    return get


@pytest.mark.smoke
@pytest.mark.parametrize("strategy", ["full", "partial", "lora"])
def test_two_gloo_processes_train_like_one_process_on_the_same_global_batch(strategy, runs):
    one, _ = runs(strategy, 1)
    two, ckpt = runs(strategy, 2)
    assert one.steps == two.steps == 9 and len(one.step_losses) == len(two.step_losses) == 9
    np.testing.assert_allclose(two.step_losses, one.step_losses, atol=TOL, rtol=0)
    assert np.mean(one.step_losses[-4:]) < 0.8 * one.step_losses[0]  # it learned: not two untrained models compared
    np.testing.assert_allclose([h["train_loss"] for h in two.history], [h["train_loss"] for h in one.history], atol=TOL)
    (p1, m1), (p2, m2) = held_out(one), held_out(two)
    np.testing.assert_allclose(p2, p1, atol=TOL, rtol=0)
    assert m1["accuracy"] > 0.45  # above chance (1/3) on the balanced held-out rows
    assert m2["accuracy"] == m1["accuracy"] and abs(m2["f1_macro"] - m1["f1_macro"]) <= TOL
    assert abs(m2["loss"] - m1["loss"]) <= TOL
    assert two.samples_per_s > 0
    # one writer: rank 0's newest checkpoint and nothing else (no second rank's file, no temp file)
    assert [p.name for p in ckpt.iterdir()] == ["step-000000008.pt"]


@pytest.mark.smoke
def test_a_data_parallel_fine_tune_resumes_from_its_checkpoint(tiny, runs, tmp_path):
    """Stopped after the step-8 checkpoint (what a killed run leaves), a new launch continues it."""
    straight, ckpt = runs("full", 2)
    again = tmp_path / "again"
    shutil.copytree(ckpt, again)
    resumed = train(tiny, "full", 2, again)
    assert resumed.resumed_from == 8 and resumed.steps == 9 and len(resumed.step_losses) == 1
    np.testing.assert_allclose(resumed.step_losses, straight.step_losses[-1:], atol=1e-6, rtol=0)
    assert resumed.history == straight.history
    expected = straight.model.state_dict()
    for k, v in resumed.model.state_dict().items():
        np.testing.assert_allclose(v.cpu().numpy(), expected[k].cpu().numpy(), atol=1e-6, rtol=0, err_msg=k)

    # the same checkpoint resumed by one process: the global batch makes the two interchangeable
    single = tmp_path / "single"
    shutil.copytree(ckpt, single)
    alone = train(tiny, "full", 1, single)
    assert alone.resumed_from == 8
    np.testing.assert_allclose(held_out(alone)[0], held_out(straight)[0], atol=TOL, rtol=0)


@pytest.mark.smoke
def test_cached_partial_stays_in_one_process_and_says_so(tiny, caplog):
    from tuneline.engine import prefix
    from tuneline.engine.trainer import build_model, fit

    cfg = config("partial", 2)
    model, tokenizer = build_model(tiny, LABELS, cfg, "partial")
    states = prefix.compute(model, tokenizer, TRAIN[0], 16, 1, "fp32")
    with caplog.at_level(logging.INFO, logger="tuneline"):
        result = fit(tiny, LABELS, "partial", *TRAIN, cfg, frozen_layers=1, states=states)
    assert "frozen-prefix cache trains in one process" in caplog.text
    assert "epoch 2" in caplog.text  # INFO lines are captured: the launch's line would be seen
    assert result.steps == 9 and "data-parallel over" not in caplog.text


@pytest.mark.unit
def test_shards_of_a_global_batch_cover_its_rows_once():
    from tuneline.engine.batching import IGNORE, LabelledRows, LengthGroupedBatches, Shard

    lengths = np.random.default_rng(0).integers(1, 30, size=41)
    batches = LengthGroupedBatches(lengths, 8, seed=5)
    shards = [Shard(LengthGroupedBatches(lengths, 8, seed=5), r, 3) for r in range(3)]
    for s in [batches, *shards]:
        s.set_epoch(2)
    for idx, *parts in zip(batches, *shards):
        real = [i for p in parts for i in p if i >= 0]
        assert real == idx  # contiguous shares, in rank order: the one-process rows exactly
        assert all(len(p) >= 1 for p in parts)  # an empty share gets a placeholder row
    assert len(shards[0]) == len(batches) == 6
    data = LabelledRows("input_ids", [[1], [2, 3]], [0, 1])
    assert data[~1] == {"input_ids": [2, 3], "labels": IGNORE} and data[1] == {"input_ids": [2, 3], "labels": 1}


@pytest.mark.unit
def test_the_global_batch_loss_of_one_process_is_the_class_weighted_mean():
    import torch

    from tuneline.engine.batching import IGNORE
    from tuneline.engine.trainer import global_batch_loss

    logits, labels = torch.randn(7, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 2, 2, 1, 0])
    weight = torch.tensor([0.5, 1.0, 3.0])
    expected = torch.nn.CrossEntropyLoss(weight=weight)(logits, labels)
    torch.testing.assert_close(global_batch_loss(logits, labels, weight), expected)
    with_placeholder = global_batch_loss(torch.cat([logits, logits[:1]]), torch.cat([labels, torch.tensor([IGNORE])]), weight)
    torch.testing.assert_close(with_placeholder, expected)


@pytest.mark.unit
def test_train_devices_is_validated_and_is_not_part_of_what_a_fine_tune_computes(tmp_path):
    from tuneline.config import ConfigError, load_config
    from tuneline.engine import resume

    with pytest.raises(ConfigError, match="train.devices"):
        load_config(None, ["train.devices=0"])
    data = tmp_path / "train.parquet"
    data.write_bytes(b"rows")
    cand = {"name": "m", "model": "m", "strategy": "full"}
    one, two = (resume.work_dir(tmp_path / "features", "fold0", cand, TrainConfig(devices=d), 1, data) for d in (1, 2))
    assert one == two  # a fold checkpointed by 2 processes resumes with 1 and vice versa
