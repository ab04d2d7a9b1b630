"""A bad preference file stops `tuneline run` before training, names file/field/problem/line, leaves nothing."""
from __future__ import annotations

import json
import subprocess

import pytest

from conftest import venv_env
from llm_fixtures import BAD, llm_base  # noqa: F401  (fixture)

pytestmark = pytest.mark.data

CASES = {
    "missing_rejected.jsonl": ["field 'rejected' is missing from the file", "expect_column_to_exist"],
    "identical_chosen_rejected.jsonl": ["fields 'chosen' and 'rejected' are identical at identical_chosen_rejected.jsonl:4"],
    "empty_prompt.jsonl": ["field 'prompt' is empty at empty_prompt.jsonl:2"],
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_preference_file_fails_before_training(name, tmp_path, prefect_api_url, llm_base):
    source = BAD / name
    env = venv_env() | {"PREFECT_API_URL": prefect_api_url, "COLUMNS": "220"}
    proc = subprocess.run(["tuneline", "run", "--set", "task=preference", "--set", f"data.source={source}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "data validation failed for" in output and source.name in output
    for fragment in CASES[name]:
        assert fragment in output, f"{fragment!r} missing from:\n{output[-3000:]}"
    assert "Traceback" not in output
    for rel in ("data/processed", "data/selection", "data/cv", "models", "data/eval", "data/registry", "mlflow.db", "mlartifacts"):
        assert not (tmp_path / rel).exists(), rel
    report = json.loads((tmp_path / "data" / "validation" / "report.json").read_text())
    assert report["success"] is False and report["task"] == "preference"
