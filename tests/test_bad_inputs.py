"""Every bad input stops `tuneline run` before training, names file/column/problem, leaves nothing."""
from __future__ import annotations

import subprocess

import pytest

from conftest import REPO, venv_env

pytestmark = pytest.mark.data

BAD = REPO / "tests" / "data" / "bad"

CASES = {
    "empty.csv": ([], ["the file is empty", "'text'", "'label'"]),
    "header_only.csv": ([], ["has a header but no data rows", "'label'"]),
    "missing_label_column.csv": ([], ["column 'label'", "data.label_column", "not found", "['text']"]),
    "wrong_delimiter.csv": (["data.delimiter=,"], ["column 'text'", "not found", "data.delimiter"]),
    "non_utf8.csv": (["data.encoding=utf-8"], ["not valid utf-8", "line 52, column 'text'"]),
    "labels_outside_set.csv": (["validate.labels=[neg, pos]"], ["column 'label'", "expect_column_values_to_be_in_set", "'maybe'"]),
    "single_class.csv": ([], ["column 'label'", "expect_column_unique_value_count_to_be_between", "observed 1"]),
    "all_null_text.csv": ([], ["column 'text'", "expect_column_values_to_not_be_null", "50 unexpected (100.00%)"]),
    "huge_text.csv": ([], ["column 'text'", "expect_column_value_lengths_to_be_between", "'max_value': 10000"]),
    "only_duplicates.csv": ([], ["column 'text'", "expect_column_proportion_of_unique_values_to_be_between", "observed 0.02"]),
    "binary_garbage.csv": ([], ["NUL bytes", "binary file"]),
    "wrong_schema.parquet": ([], ["column 'text'", "data.text_column", "not found", "['a', 'b']"]),
    "case_only_labels.csv": ([], ["column 'label'", "differ only in letter case ('Positive' / 'positive')", "validate.fold_label_case"]),
    "numeric_text.csv": ([], ["column 'text'", "95% or more of the texts are numbers", "expect_column_values_to_not_match_regex"]),
    "object_not_records.json": ([], ["holds a JSON object", "not an array of records", "under key 'data'"]),
    "array_of_arrays.json": ([], ["item 0 of the JSON array is an array", "not a record"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_before_training(name, tmp_path, prefect_api_url):
    overrides, fragments = CASES[name]
    if name == "huge_text.csv":
        import importlib.util

        spec = importlib.util.spec_from_file_location("make_bad", BAD / "make_bad.py")
        make = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(make)
        source = make.make_huge(tmp_path / name)
    else:
        source = BAD / name
    args = ["tuneline", "run", "--set", f"data.source={source}", "--set", "data.label_column=label"]
    for o in overrides:
        args += ["--set", o]
    env = venv_env() | {"PREFECT_API_URL": prefect_api_url, "COLUMNS": "200"}
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert source.name in output
    for fragment in fragments:
        assert fragment in output, f"{fragment!r} missing from:\n{output[-3000:]}"
    # Nothing a later stage would read, nothing trained, nothing registered.
    for rel in ("data/processed", "data/selection", "data/cv", "models", "data/eval", "data/registry", "mlflow.db", "mlartifacts"):
        assert not (tmp_path / rel).exists(), rel
    report = tmp_path / "data" / "validation" / "report.json"
    if report.exists():
        import json

        assert json.loads(report.read_text())["success"] is False
