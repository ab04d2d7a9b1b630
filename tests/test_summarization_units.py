"""Summarization, fast parts: the project's ROUGE module against rouge-score itself, its seeded
intervals, the sentence splitter, the data contract's errors, truncation and the ROUGE-L gate."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

PREDICTIONS = ["The model improves translation of medical terms. It works in both directions.",
               "We propose a parser for code-mixed text!", "Results are mixed", "A new corpus of 2,000 dialogues is released."]
REFERENCES = ["The proposed analogy solvers improve machine translation of medical terms. They handle rich morphology.",
              "They propose a parser for code-mixed social media text.", "Results improve on three benchmarks.",
              "They release a corpus of dialogues. It has 2,000 conversations."]


@pytest.fixture(scope="module")
def tokenizer():
    """A word-level tokenizer trained here (no download): validation and truncation only count tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["a b c d e f g h some words here"], trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")


@pytest.mark.unit
def test_evaluate_module_equals_rouge_score_with_the_same_sentence_split():
    from rouge_score import rouge_scorer

    from tuneline.summarization.scoring import ROUGE_TYPES, rouge_metric
    from tuneline.summarization.tuneline_rouge.tuneline_rouge import with_sentence_breaks

    got = rouge_metric().compute(predictions=PREDICTIONS, references=REFERENCES, use_stemmer=True, per_row=True, seed=3)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True, split_summaries=False)
    direct = [scorer.score(with_sentence_breaks(r), with_sentence_breaks(p)) for p, r in zip(PREDICTIONS, REFERENCES)]
    for t in ROUGE_TYPES:
        rows = [d[t].fmeasure for d in direct]
        assert got[f"{t}_per_row"] == pytest.approx(rows, abs=1e-12)
        assert got[t] == pytest.approx(np.mean(rows), abs=1e-12)
        assert got[f"{t}_low"] <= got[t] <= got[f"{t}_high"]
    # Lsum reads one sentence a line: the split reached rouge-score
    assert with_sentence_breaks(PREDICTIONS[0]).count("\n") == 1 and with_sentence_breaks(REFERENCES[3]).count("\n") == 1


@pytest.mark.unit
def test_two_runs_give_identical_intervals_and_the_seed_is_what_decides():
    import evaluate

    from tuneline.summarization.scoring import METRIC_DIR

    first = evaluate.load(str(METRIC_DIR)).compute(predictions=PREDICTIONS, references=REFERENCES, seed=7, bootstrap_samples=500)
    second = evaluate.load(str(METRIC_DIR)).compute(predictions=PREDICTIONS, references=REFERENCES, seed=7, bootstrap_samples=500)
    other = evaluate.load(str(METRIC_DIR)).compute(predictions=PREDICTIONS, references=REFERENCES, seed=8, bootstrap_samples=500)
    assert first == second
    assert any(first[k] != other[k] for k in first if k.endswith(("_low", "_high")))


@pytest.mark.unit
def test_sentence_splitter_keeps_abbreviations_and_numbers_whole():
    from tuneline.summarization.tuneline_rouge.tuneline_rouge import split_sentences

    assert split_sentences("We use e.g. BERT . Scores rise by 3.5 points! Fig. 2 shows it.\nA new line") == [
        "We use e.g. BERT .", "Scores rise by 3.5 points!", "Fig. 2 shows it.", "A new line"]
    assert split_sentences("") == []


def _raw(rows: list[tuple], split: bool = True) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["document", "summary", "aspect", "split"])
    df["where"] = [f"{'test' if s == 'test' else 'train'}.jsonl:{i + 1}" for i, s in enumerate(df["split"])]
    return df if split else df.drop(columns="split")


GOOD = [("a b c d e f g h", "a b", "challenge", "train"), ("a b c d e f g h", "c d", "outcome", "train"),
        ("b c d e f g h a", "e f", "challenge", "train"), ("h g f e d c b a", "g h", "challenge", "test")]


def _validate(raw, tmp_path, *overrides):
    from tuneline.config import load_config
    from tuneline.summarization.validation import validate

    cfg = load_config(None, ["task=summarization", "summarization.min_document_tokens=4", *overrides]).summarization
    return validate(cfg, raw, "train.jsonl + test.jsonl", pytest.tokenizer_for_tests, tmp_path / "validation")


@pytest.fixture(autouse=True)
def _tok(tokenizer):
    pytest.tokenizer_for_tests = tokenizer


@pytest.mark.unit
def test_valid_rows_pass_and_the_same_paper_per_aspect_is_no_duplicate(tmp_path):
    out = _validate(_raw(GOOD), tmp_path)
    assert out["rows"] == 4 and json.loads((tmp_path / "validation" / "report.json").read_text())["success"] is True


@pytest.mark.unit
@pytest.mark.parametrize("change, problem, where, column", [
    ({1: ("a b c d e f g h", "x y", "challenge", "train")}, "the same document appears again", "train.jsonl:2", "duplicate_document"),
    ({0: ("   ", "a b", "challenge", "train")}, "the document (summarization.document_column='document') is empty", "train.jsonl:1", "document"),
    ({2: ("b c d e f g h a", "a b c d e f g h i j", "challenge", "train")}, "the summary has more words than its document",
     "train.jsonl:3", "summary_longer_than_document"),
    ({3: ("b c d e f g h a", "g h", "outcome", "test")}, "the same document is in both data.source (train) and data.test_source",
     "test.jsonl:4", "document_in_train_and_test"),
    ({0: ("a b", "a", "challenge", "train")}, "shorter than summarization.min_document_tokens=4", "train.jsonl:1", "document_tokens"),
])
def test_each_broken_contract_names_the_row_the_column_and_what_is_allowed(tmp_path, change, problem, where, column):
    from tuneline.expectations import DataValidationError

    rows = list(GOOD)
    for i, row in change.items():
        rows[i] = row
    with pytest.raises(DataValidationError) as err:
        _validate(_raw(rows), tmp_path)
    text = str(err.value)
    assert problem in text and where in text and f"column {column!r}" in text, text
    assert "train.jsonl + test.jsonl" in text


@pytest.mark.unit
def test_too_many_long_documents_fail_and_a_few_are_cut_and_counted(tmp_path, tokenizer):
    from tuneline.config import load_config
    from tuneline.expectations import DataValidationError
    from tuneline.summarization.preprocess import preprocess

    with pytest.raises(DataValidationError, match=r"summarization.max_document_tokens=6 tokens.*max_truncated_fraction") as err:
        _validate(_raw(GOOD), tmp_path, "summarization.max_document_tokens=6", "summarization.max_truncated_fraction=0.5")
    assert "'mostly': 0.5" in str(err.value)
    _validate(_raw(GOOD), tmp_path, "summarization.max_document_tokens=6", "summarization.max_truncated_fraction=1.0")
    config = load_config(None, ["task=summarization", "summarization.max_document_tokens=6"])
    report = preprocess(config.summarization, config.preprocess, _raw(GOOD), tokenizer, tmp_path / "processed")
    assert report["counts"]["documents_truncated"] == 4 and report["counts"]["rows_test"] == 1
    train = pd.read_parquet(tmp_path / "processed" / "train.parquet")
    assert train["document"].tolist()[0] == "a b c d e f"  # the head is kept
    assert train["instruction"].tolist()[0] == "Summarize the challenge of the following paper in one sentence."


@pytest.mark.unit
def test_a_missing_column_names_the_file_the_key_and_the_columns_present(tmp_path):
    from tuneline.config import load_config
    from tuneline.summarization.data import SummarizationDataError, read_source

    path = tmp_path / "docs.csv"
    path.write_text("text,abstract\nsome words here,words\n")
    config = load_config(None, ["task=summarization", f"data.source={path}", "summarization.summary_column=abstract"])
    with pytest.raises(SummarizationDataError, match=r"docs.csv: column 'document' \(summarization.document_column\) not found; "
                                                     r"columns present: \['text', 'abstract'\]"):
        read_source(config.data, config.summarization, path, "train")
    ok = load_config(None, ["task=summarization", f"data.source={path}", "summarization.summary_column=abstract",
                            "summarization.document_column=text"])
    df = read_source(ok.data, ok.summarization, path, "train")
    assert df["where"].tolist() == ["docs.csv:2"] and df["text"].tolist() == ["some words here"]


@pytest.mark.unit
def test_a_bad_family_names_the_key_and_the_allowed_values():
    from tuneline.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"summarization.family: Input should be 'causal' or 'seq2seq'"):
        load_config(None, ["task=summarization", "summarization.family=encoder"])


@pytest.mark.unit
def test_gate_promotes_a_clear_rouge_l_gain_over_documents_and_not_a_tie():
    from tuneline.config import load_config
    from tuneline.summarization.plugin import PLUGIN

    c = load_config(None, ["task=summarization", "promote.bootstrap_samples=500"])
    rng = np.random.default_rng(0)
    champ = rng.uniform(0.1, 0.3, 40)
    keys = [f"d{i}" for i in range(40)]
    better = {"keys": keys, "scores": {"rougeL": champ + 0.1}}
    same = {"keys": keys, "scores": {"rougeL": champ.copy()}}
    first = PLUGIN.gate(c, better, None)
    assert first["promote"] is True and first["metric"] == "rougeL"
    win = PLUGIN.gate(c, better, same)
    assert win["promote"] is True and win["test"] == "paired_bootstrap" and win["p_value"] < 0.05
    assert win["champion_rescored_on_rows"] == 40 and win["delta"] == pytest.approx(0.1)
    tie = PLUGIN.gate(c, same, same)
    assert tie["promote"] is False and "ties" in tie["reason"]
    blind = PLUGIN.gate(c, better, None, "OSError: gone")
    assert blind["promote"] is False and "cannot be re-scored" in blind["reason"]


@pytest.mark.unit
def test_the_tasks_dag_and_cache_keys_follow_the_keys_it_reads(tmp_path):
    import yaml

    from tuneline.config import load_config
    from tuneline.pipeline.dvcfile import render
    from tuneline.pipeline.fingerprint import stage_key

    config = load_config(None, ["task=summarization"])
    stages = yaml.safe_load(render(config))["stages"]
    assert stages["crossval"]["params"] == ["task", "summarization", "cv.k", "cv.seed"]
    assert all(not {"llm", "train", "select", "validate"} & set(s["params"]) for s in stages.values())
    assert "src/tuneline/summarization" in stages["refit"]["deps"] and "src/tuneline/llm" not in stages["refit"]["deps"]
    key = lambda *o: stage_key("crossval", load_config(None, ["task=summarization", *o]), tmp_path)  # noqa: E731
    assert key("llm.beta=0.3", "train.learning_rate=0.5") == key()
    assert key("summarization.lora_r=4") != key()


@pytest.mark.data
def test_the_packaged_aclsum_sample_has_one_row_per_paper_and_aspect_and_disjoint_splits():
    from tuneline.config import load_config
    from tuneline.summarization.data import document_key, read_aclsum

    raw = read_aclsum(load_config(None, ["task=summarization"]).summarization)
    assert set(raw["aspect"]) == {"challenge", "approach", "outcome"} and raw[["document", "summary"]].notna().all().all()
    keys = [document_key(d) for d in raw["document"]]
    assert len(set(zip(keys, raw["aspect"]))) == len(raw)  # (document, aspect) is unique
    train = {k for k, s in zip(keys, raw["split"]) if s == "train"}
    test = {k for k, s in zip(keys, raw["split"]) if s == "test"}
    assert len(train) >= 140 and len(test) >= 95 and not train & test
    assert raw["where"].str.contains(r"aclsum/(train|val|test)\.jsonl:\d+ \(.+, (challenge|approach|outcome)\)").all()


@pytest.mark.unit
def test_summarization_training_and_scoring_import_no_mlflow_prefect_or_dvc():
    """model, scoring, data and preprocess run where only torch/transformers/peft/trl are (a GPU box)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import tuneline.summarization.model, tuneline.summarization.scoring, tuneline.summarization.data, "
            "tuneline.summarization.preprocess, tuneline.summarization.validation\n"
            "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in ('mlflow', 'prefect', 'dvc')}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "[]"



@pytest.mark.unit
def test_the_pyfunc_cuts_a_long_document_where_training_cut_it(tokenizer):
    """A document past summarization.max_document_tokens reaches the model as its head (the cut the
    training rows had), not whole; the aspect picks its instruction as in training."""
    from tuneline.summarization.pyfunc import input_rows

    meta = {"instruction": "Summarize:", "aspect_instruction": "Summarize the {aspect}:", "max_document_tokens": 4}
    rows = input_rows(meta, tokenizer, pd.DataFrame({"text": ["a b c d e f g h", "a b"], "aspect": ["outcome", None]}))
    assert [r["document"] for r in rows] == ["a b c d", "a b"]
    assert [r["instruction"] for r in rows] == ["Summarize the outcome:", "Summarize:"]
    with pytest.raises(ValueError, match="'document' \\(or 'text'\\) column; got \\['body'\\]"):
        input_rows(meta, tokenizer, pd.DataFrame({"body": ["a"]}))
