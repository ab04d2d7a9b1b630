"""Versions registered before the package layout moved still load and predict with the new code.

A "models from code" version carries a copy of the file it was logged with; the old files import
`tuneline.pyfunc.TunelineModel` (kept as a shim) and `tuneline.llm.pyfunc.ChatAdapterModel`. Each test
checks out the last commit before the move, registers a version with that code in a subprocess
(tests/legacy_register.py), deletes the old code, and loads the version here, with the new code.
"""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, venv_env
from llm_fixtures import hh_slice, llm_base, write_jsonl  # noqa: F401  (fixture)
from services import missing

pytestmark = pytest.mark.smoke

# The last commit before the layout by layer (f3aaa99): its src/ is the code old versions were registered with.
OLD_COMMIT = "4abad2386cf1aa3edb7ba7d25885c1b7a1314dda"
SCRIPT = REPO / "tests" / "legacy_register.py"


def old_source(dest: Path) -> Path:
    """`git archive OLD_COMMIT src` extracted into dest; a skip when this checkout cannot provide it."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, check=False)

    # a skip like a missing service's: CI (TUNELINE_REQUIRE_SERVICES=1, a full clone) fails instead
    if shutil.which("git") is None or git("rev-parse", "--git-dir").returncode != 0:
        missing(f"the git history of {REPO}", f"the code registered before the move ({OLD_COMMIT[:7]}) comes from it; "
                "run from a git clone")
    if git("cat-file", "-e", f"{OLD_COMMIT}^{{commit}}").returncode != 0:
        missing(f"commit {OLD_COMMIT[:7]} (the layout before the move) in this checkout's history",
                "a shallow clone lacks it: git fetch --unshallow")
    archive = git("archive", "--format=tar", OLD_COMMIT, "src")
    assert archive.returncode == 0, archive.stderr.decode(errors="replace")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    assert (dest / "src" / "tuneline" / "pyfunc_model.py").is_file(), f"{OLD_COMMIT[:7]} has no src/tuneline/pyfunc_model.py"
    return dest / "src"


def register_with_old_code(tmp_path: Path, kind: str, *extra: str, timeout: int = 300) -> dict:
    """Run tests/legacy_register.py on the old src/, then delete that src/: only the registry's copies remain."""
    old_src = old_source(tmp_path / "old")
    root, out = tmp_path / "project", tmp_path / f"{kind}.json"
    root.mkdir()
    env = venv_env() | {"PYTHONPATH": str(old_src)}
    proc = subprocess.run([sys.executable, str(SCRIPT), kind, str(old_src), str(root), str(out), *extra], cwd=root, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"the old code failed to register a {kind} version:\n{proc.stderr[-4000:]}"
    old = json.loads(out.read_text(encoding="utf-8"))
    assert Path(old["tuneline_file"]).is_relative_to(old_src.resolve()), old["tuneline_file"]
    assert Path(old["class_file"]).is_relative_to(old_src.resolve()), f"old code predicted through {old['class_file']}"
    shutil.rmtree(old_src.parent)
    for folder in ("models", "adapter"):  # the folders it logged: the registry must hold its own copies
        shutil.rmtree(root / folder, ignore_errors=True)
    return old


def logged_code(root: Path, registration: dict, name: str) -> str:
    """The models-from-code file MLflow copied into the version's artifacts when the old code logged it."""
    from mlflow import MlflowClient

    version = MlflowClient(registration["tracking_uri"]).get_model_version(registration["registered_model_name"],
                                                                           registration["version"])
    model_id = version.source.removeprefix("models:/")  # MLflow 3: the logged model's id, its artifact folder's name
    found = [p for p in (root / "mlartifacts").rglob(name) if model_id in p.parts]
    assert len(found) == 1, f"{registration['model_uri']}: expected one {name} in its artifacts, found {found}"
    return found[0].read_text(encoding="utf-8")


def load_with_new_code(registration: dict):
    import tuneline
    from tuneline.tracking import runs as tracking

    assert Path(tuneline.__file__).resolve().is_relative_to(REPO / "src"), f"this process imported {tuneline.__file__}"
    with tracking.scoped(registration["tracking_uri"]) as mlflow:
        return mlflow.pyfunc.load_model(registration["model_uri"])


def test_classifier_registered_by_the_old_pipeline_predicts_the_same(tmp_path):
    old = register_with_old_code(tmp_path, "classifier")
    reg = old["registration"]
    assert old["class"] == "tuneline.pyfunc.TunelineModel"
    # the premise: the version's own code file still imports the pre-move module (the shim answers it)
    assert "from tuneline.pyfunc import TunelineModel" in logged_code(tmp_path / "project", reg, "pyfunc_model.py")

    model = load_with_new_code(reg)
    python_model = model.unwrap_python_model()
    assert f"{type(python_model).__module__}.{type(python_model).__name__}" == "tuneline.classification.pyfunc.TunelineModel"
    assert python_model.classifier.meta["strategy"] == "feature_extraction"
    new = model.predict(pd.DataFrame({"text": old["texts"]}))
    expected = pd.DataFrame(old["output"])
    assert list(new.columns) == list(expected.columns), "label and p_<label> columns differ from the old code's"
    assert new["label"].tolist() == expected["label"].tolist()
    probabilities = [c for c in expected.columns if c.startswith("p_")]
    assert len(probabilities) >= 2
    np.testing.assert_allclose(new[probabilities].to_numpy(), expected[probabilities].to_numpy(), rtol=0, atol=1e-6)


def test_llm_adapter_registered_by_the_old_code_answers_the_same(tmp_path, llm_base):
    # llm_base: the packaged base converted (once per cache) here, so the old code's run reuses it
    rows = write_jsonl(tmp_path / "pairs.jsonl", hh_slice("train", 2, max_chars=200))
    old = register_with_old_code(tmp_path, "llm", str(rows))
    reg = old["registration"]
    assert old["class"] == "tuneline.llm.pyfunc.ChatAdapterModel"
    assert "from tuneline.llm.pyfunc import ChatAdapterModel" in logged_code(tmp_path / "project", reg, "pyfunc_model.py")

    model = load_with_new_code(reg)
    python_model = model.unwrap_python_model()
    assert Path(sys.modules[type(python_model).__module__].__file__).resolve().is_relative_to(REPO / "src")
    new = model.predict(pd.DataFrame({"prompt": old["prompts"]}), params={"max_new_tokens": 8})
    answers = old["output"]["response"]
    assert all(a.strip() for a in answers), f"the old code gave empty answers: {answers}"
    assert new["response"].tolist() == answers

