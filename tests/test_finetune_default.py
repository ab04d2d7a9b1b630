"""The fine-tuning default: `auto` by hardware, the frozen-prefix cache, the corrected t-test, the
baseline as a real candidate, and model folders that plain transformers loads (or refuses)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tuneline.config import DEFAULT_MODEL, TrainConfig
from tuneline.engine.models import resolve_model

LABELS = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def minilm() -> str:
    return resolve_model(DEFAULT_MODEL)


def toy_texts(n: int = 120) -> tuple[list[str], np.ndarray]:
    words = {0: "awful terrible sad", 1: "okay plain normal", 2: "great lovely happy"}
    texts = [f"{words[i % 3]} day number {i} " + "and more words " * (i % 5) for i in range(n)]
    return texts, np.array([i % 3 for i in range(n)])


# --- unit: no model trains --------------------------------------------------------------------

@pytest.mark.unit
def test_auto_resolves_from_the_hardware_and_fills_strategy_defaults(monkeypatch):
    from tuneline.engine import hardware

    cfg = hardware.resolve(TrainConfig())
    assert cfg.strategy == ("full" if hardware.cuda() else "partial")
    assert cfg.precision == ("bf16" if hardware.cuda() or hardware.cpu_bf16() else "fp32")
    for key, value in hardware.STRATEGY_DEFAULTS[cfg.strategy].items():
        assert getattr(cfg, key) == value
    explicit = hardware.resolve(TrainConfig(strategy="lora", precision="fp32", learning_rate=0.123, epochs=7))
    assert (explicit.strategy, explicit.precision, explicit.learning_rate, explicit.epochs) == ("lora", "fp32", 0.123, 7)
    assert explicit.batch_size == hardware.STRATEGY_DEFAULTS["lora"]["batch_size"]

    monkeypatch.setattr(hardware, "cuda", lambda: True)
    on_gpu = hardware.resolve(TrainConfig())
    assert (on_gpu.strategy, on_gpu.precision) == ("full", "bf16")


@pytest.mark.unit
def test_cache_keys_hold_the_resolved_strategy_never_the_word_auto(monkeypatch, tmp_path):
    from tuneline.pipeline import fingerprint
    from tuneline.engine import hardware
    from tuneline.config import Config

    auto = Config()
    here = hardware.resolve(auto.train)
    explicit = auto.model_copy(update={"train": auto.train.model_copy(update={"strategy": here.strategy,
                                                                              "precision": here.precision})})
    assert fingerprint.stage_key("crossval", auto, tmp_path) == fingerprint.stage_key("crossval", explicit, tmp_path)
    has_cuda = hardware.cuda()
    monkeypatch.setattr(hardware, "cuda", lambda: not has_cuda)  # the other kind of machine
    assert fingerprint.stage_key("crossval", auto, tmp_path) != fingerprint.stage_key("crossval", explicit, tmp_path)
    pooled = auto.model_copy(update={"train": auto.train.model_copy(update={"work_pool": "gpu"})})
    assert fingerprint.read_values(pooled, "crossval")["train"]["strategy"] == "auto@pool:gpu"


@pytest.mark.unit
def test_corrected_resampled_t_test_is_wider_than_the_plain_paired_test():
    from scipy import stats

    from tuneline.metrics import corrected_ttest

    a = [0.78, 0.80, 0.79, 0.81, 0.77]
    b = [0.74, 0.75, 0.73, 0.76, 0.74]
    out = corrected_ttest(a, b, n_train=800, n_test=200)
    d = np.subtract(a, b)
    t = d.mean() / math.sqrt((1 / 5 + 200 / 800) * d.var(ddof=1))
    assert out["diff"] == pytest.approx(d.mean())
    assert out["t"] == pytest.approx(t)
    assert out["p"] == pytest.approx(2 * stats.t.sf(t, 4))
    assert out["p"] > stats.ttest_rel(a, b).pvalue  # the uncorrected test is anti-conservative
    assert corrected_ttest(b, a, 800, 200)["t"] == pytest.approx(-t)
    assert corrected_ttest([0.5, 0.5], [0.5, 0.5], 10, 5)["p"] == 1.0


@pytest.mark.unit
def test_baseline_folder_round_trips_without_pickle_and_transformers_refuses_it(tmp_path):
    from transformers import AutoConfig

    from tuneline.classification import baseline
    from tuneline.classification.inference import TextClassifier
    from tuneline.classification.modelio import save_baseline

    texts, y = toy_texts()
    pipe = baseline.build("balanced", 0).fit(texts, y)
    model = baseline.TfidfClassifier.from_pipeline(pipe, 3)
    np.testing.assert_allclose(model.predict_proba(texts), pipe.predict_proba(texts), atol=1e-10)
    save_baseline(tmp_path, model, LABELS, TrainConfig())
    assert not list(tmp_path.glob("*.pkl")) and not list(tmp_path.glob("*.joblib"))
    loaded = TextClassifier(tmp_path)
    np.testing.assert_allclose(loaded.predict_proba(texts), pipe.predict_proba(texts), atol=1e-10)
    assert loaded.predict(["great lovely happy day"]) == ["positive"]
    with pytest.raises((OSError, ValueError)):
        AutoConfig.from_pretrained(tmp_path)
    assert "TF-IDF" in (tmp_path / "README.md").read_text()


# --- the engine: tiny trainings ------------------------------------------------------------------

@pytest.mark.smoke
def test_cached_partial_follows_the_per_step_losses_of_plain_partial(minilm):
    from tuneline.engine import prefix
    from tuneline.engine.trainer import build_model, train_model

    texts, y = toy_texts(200)
    cfg = TrainConfig(strategy="partial", precision="fp32", batch_size=8, learning_rate=1e-4, max_steps=20,
                      freeze_layers=4, checkpoint_every=None)
    plain_model, tok = build_model(minilm, LABELS, cfg, "partial")
    plain = train_model(plain_model, tok, texts, y, cfg, frozen_layers=4)
    cached_model, tok = build_model(minilm, LABELS, cfg, "partial")
    states = prefix.compute(cached_model, tok, texts, cfg.max_length, 4, "fp32")
    assert len(states) == len(texts) and states.hidden.dtype.is_floating_point
    cached = train_model(cached_model, tok, texts, y, cfg, frozen_layers=4, states=states)
    assert len(plain.step_losses) == len(cached.step_losses) == 20
    np.testing.assert_allclose(cached.step_losses, plain.step_losses, atol=1e-4, rtol=0)
    assert plain.step_losses[-1] != plain.step_losses[0]  # it trained
    # the models match too: the cache changes the cost, not the maths
    for (n, p), (_, q) in zip(plain_model.named_parameters(), cached_model.named_parameters()):
        assert float((p - q).detach().abs().max()) < 1e-4, n


def _hf_labels(folder, texts):
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(folder), device=-1)
    return [r["label"] for r in clf(texts, truncation=True, batch_size=32)]


@pytest.mark.smoke
@pytest.mark.parametrize("strategy, cached, lr", [("full", False, 1e-4), ("partial", False, 3e-4), ("partial", True, 3e-4),
                                                   ("lora", False, 3e-3)])
def test_every_plain_folder_gives_tuneline_labels_in_hf_pipeline(strategy, cached, lr, minilm, tmp_path):
    from test_engine import tweets

    from tuneline.engine import prefix
    from tuneline.engine.trainer import build_model, train_model
    from tuneline.classification.inference import TextClassifier
    from tuneline.classification.modelio import save_finetuned

    texts, y = tweets(96)
    held_out, _ = tweets(300, seed=1)
    cfg = TrainConfig(strategy=strategy, learning_rate=lr, epochs=2, batch_size=16, max_length=48, merge_lora=True,
                      checkpoint_every=None)  # precision auto: bf16 here where the CPU has it, as the default run
    model, tok = build_model(minilm, LABELS, cfg, strategy)
    states = prefix.compute(model, tok, texts, cfg.max_length, cfg.freeze_layers, "fp32") if cached else None
    fit = train_model(model, tok, texts, y, cfg, frozen_layers=cfg.freeze_layers if strategy == "partial" else None,
                      states=states)
    folder = tmp_path / "model"
    save_finetuned(folder, fit.model, fit.tokenizer, LABELS, cfg, strategy, DEFAULT_MODEL)
    ours = TextClassifier(folder).predict(held_out)
    theirs = _hf_labels(folder, held_out)
    assert set(theirs) <= set(LABELS)  # real names in id2label, no LABEL_0
    agree = np.mean([a == b for a, b in zip(ours, theirs)])
    assert agree >= 0.99, agree
    assert len(set(ours)) > 1  # not a constant classifier, where agreement would prove nothing


@pytest.mark.smoke
def test_feature_extraction_folder_fails_loudly_in_transformers(minilm, tmp_path):
    from transformers import pipeline

    from tuneline.engine.features import embed
    from tuneline.classification.inference import TextClassifier
    from tuneline.engine.models import load_encoder
    from tuneline.classification.head import LinearHead, save_feature_model

    texts, y = toy_texts(60)
    cfg = TrainConfig(precision="fp32")
    tokenizer, encoder = load_encoder(minilm)
    X = embed(texts, tokenizer, encoder, max_length=64, batch_size=32, pooling="mean")
    head = LinearHead.fit(X, y, 3, cfg)
    save_feature_model(tmp_path, tokenizer, encoder, head, LABELS, cfg, DEFAULT_MODEL)
    with pytest.raises((OSError, ValueError)):
        pipeline("text-classification", model=str(tmp_path))
    assert "AutoModel" in (tmp_path / "README.md").read_text()
    np.testing.assert_allclose(TextClassifier(tmp_path).predict_proba(texts), head.predict_proba(X), atol=1e-6)


@pytest.mark.smoke
def test_features_from_the_frozen_prefix_equal_features_from_scratch(minilm):
    from tuneline.engine import prefix
    from tuneline.engine.features import embed
    from tuneline.engine.models import load_encoder

    texts, _ = toy_texts(50)
    tokenizer, encoder = load_encoder(minilm)
    direct = embed(texts, tokenizer, encoder, max_length=64, batch_size=16, pooling="mean", precision="fp32")
    states = prefix.compute(encoder, tokenizer, texts, 64, 4, "fp32")
    np.testing.assert_allclose(prefix.pooled(encoder, states, 4, "mean", "fp32"), direct, atol=1e-5)


@pytest.mark.smoke
def test_a_prefix_cache_over_its_bound_falls_back_to_plain_partial_with_a_warning(minilm, caplog, tmp_path):
    import logging

    from tuneline.engine import hardware
    from tuneline.classification.crossval import FrozenPrefix

    texts, _ = toy_texts(200)  # ~3,000 tokens x 384 x 2 bytes > 1 MB
    cand = {"name": "MiniLM:partial", "resolved": minilm, "fingerprint": "fp", "strategy": "partial"}
    small = hardware.resolve(TrainConfig(strategy="partial", precision="bf16", prefix_cache_max_mb=1))
    with caplog.at_level(logging.WARNING, logger="tuneline.classification.crossval"):
        assert FrozenPrefix(cand, small, tmp_path, LABELS).usable(texts) is False
    assert "train.prefix_cache_max_mb=1" in caplog.text and "slower" in caplog.text
    assert FrozenPrefix(cand, small.model_copy(update={"prefix_cache_max_mb": 4096}), tmp_path, LABELS).usable(texts) is True
