"""Content fingerprints of a step: its key hashes the files it reads, the params it reads for the
project's task and the code; its manifest records, after it ran, that key and its outputs' hashes. A
result is reused only while both still match (a `dvc repro` or a hand edit in between re-runs it).
The Prefect cache (tuneline.tasks.caching) and the idempotent registration build on these keys.
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Optional

from tuneline import plugins
from tuneline.config import TrainConfig
from tuneline.storage import ABSENT, file_md5, path_digest, read_json, write_json  # noqa: F401  (path_digest: re-exported)

# Keys that change how or where a step runs, never what it produces: left out of every key so that
# the same pipeline run in-process and on a work pool (or with other checkpoint spacing) is one cache.
EXECUTION_ONLY: dict[str, tuple[str, ...]] = {"train": TrainConfig.EXECUTION_ONLY,
                                               "tune": ("parallel", "task_runner", "storage")}

MANIFEST_DIR = ".cache/stages"


def _package_dirs() -> list[Path]:
    import importlib.util

    import tuneline

    specs = [importlib.util.find_spec(name) for name in ("tuneline.tasks", "tuneline.flows")]  # None: the engine alone
    return [Path(tuneline.__file__).parent, *(Path(spec.origin).parent for spec in specs if spec is not None)]


def _plugin_dir(task: str) -> Path:
    import importlib

    return Path(importlib.import_module(plugins.get(task).package).__file__).parent


@functools.lru_cache(maxsize=8)
def code_digest(task: str = "classification") -> str:
    """Hash of the Python sources a `task` run executes: the library, tasks and flows, less the other
    tasks' plugin packages; dvc.yaml's code deps, and as coarse: a shared-code edit re-runs every step."""
    mine = _plugin_dir(task)
    others = {_plugin_dir(t) for t in plugins.names()} - {mine}
    h = hashlib.sha256()
    for d in dict.fromkeys(_package_dirs() + [mine]):
        for f in sorted(d.rglob("*.py")):
            if not any(o in f.parents for o in others):
                h.update(f"{d.name}/{f.relative_to(d).as_posix()}\0{file_md5(f)}\n".encode())
    return h.hexdigest()


def reads(task: str, name: str) -> tuple[str, ...]:
    """The params (sections or dotted keys) stage `name` reads for `task`: dvc.yaml's `params:`."""
    from tuneline.pipeline.stages import SHARED_READS

    return ("task", *SHARED_READS.get(name, ()), *plugins.get(task).reads.get(name, ()))


def _value(config, key: str):
    section, _, rest = key.partition(".")
    value = config.section(section) if section != "task" else config.task
    value = value.model_dump(mode="json") if hasattr(value, "model_dump") else value
    if not rest:
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in EXECUTION_ONLY.get(section, ())}
            if section == "train":
                value |= resolved_training(config.train)
            if section == "tune" and not value.get("enabled"):
                value = {"enabled": False}  # a search that is off changes nothing
        return value
    if section == "train" and rest in ("strategy", "precision"):
        return resolved_training(config.train).get(rest, value[rest])  # on a pool only `auto` is re-spelled
    return value[rest]


def read_values(config, name: str) -> dict:
    """{key: value} of what stage `name` reads: the config part of its cache key, logged as params."""
    return {key: _value(config, key) for key in reads(config.task, name)}


def resolved_training(train) -> dict:
    """What `auto` means for this key: this machine's resolution, or — when a work pool trains —
    that pool's (its hardware decides, so its runs and local ones never share an entry)."""
    if train.work_pool:
        return {k: f"{getattr(train, k)}@pool:{train.work_pool}" for k in ("strategy", "precision")
                if getattr(train, k) == "auto"}
    from tuneline.engine.hardware import resolve_precision, resolve_strategy

    return {"strategy": resolve_strategy(train.strategy), "precision": resolve_precision(train.precision)}


def external_digest(spec: str, root: Path) -> str:
    """A registered model URI -> 'NAME/VERSION/RUN' as the registry resolves it now (an alias that moved
    changes the key); a folder or file -> its content hash. A URI that does not resolve keys as such, so
    the step runs and reports it."""
    if not spec.startswith("models:/"):
        return path_digest(Path(spec).expanduser())
    from tuneline.tracking.runs import registry_version, tracking_uri

    try:
        v = registry_version(tracking_uri(Path(root)), spec)
    except LookupError as exc:
        return f"unresolved: {exc}"
    return f"{v.name}/{v.version}/{v.run_id}"


def input_digests(config, name: str, root: Path) -> dict[str, str]:
    from tuneline.pipeline.stages import inputs

    digests = {rel: path_digest(Path(root) / rel) for rel in inputs(name, config.paths)}
    sources = plugins.get(config.task).source_files(config) if name == "ingest" else []  # the user's data file(s)
    digests |= {f"source:{p.name}": path_digest(p) for p in sources}
    digests |= {f"external:{spec}": external_digest(spec, root) for spec in plugins.get(config.task).external_inputs(config, name)}
    return digests


def stage_key(name: str, config, root: Path) -> str:
    """The key of one step's work: its input files, its config sections and the code."""
    payload = {"stage": name, "code": code_digest(config.task), "config": read_values(config, name),
               "inputs": input_digests(config, name, root)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def group_inputs(names: tuple[str, ...], config) -> list[str]:
    """The files consecutive steps read from outside the group (what a work pool must be given)."""
    from tuneline.pipeline.stages import inputs, outputs

    produced = {o for n in names for o in outputs(n, config.paths)}
    return sorted({i for n in names for i in inputs(n, config.paths)} - produced)


def group_key(names: tuple[str, ...], config, root: Path) -> str:
    """The key of consecutive steps run as one unit (crossval + refit on a work pool): the files they
    read from outside the group, the config sections any of them reads, and the code."""
    values = {k: v for n in names for k, v in read_values(config, n).items()}
    payload = {"stages": list(names), "code": code_digest(config.task), "config": values,
               "inputs": {rel: path_digest(Path(root) / rel) for rel in group_inputs(names, config)}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def output_digests(config, name: str, root: Path) -> dict[str, str]:
    from tuneline.pipeline.stages import outputs

    return {rel: path_digest(Path(root) / rel) for rel in outputs(name, config.paths)}


def manifest_path(name: str, root: Path) -> Path:
    return Path(root) / MANIFEST_DIR / f"{name}.json"


def record(name: str, config, root: Path, key: str) -> None:
    """After a step ran: remember its key and the outputs it wrote."""
    write_json(manifest_path(name, root), {"key": key, "outputs": output_digests(config, name, root)})


def outputs_current(name: str, config, root: Path, key: Optional[str] = None) -> bool:
    """True when the step's outputs on disk are exactly those its last run for `key` wrote."""
    try:
        manifest = read_json(manifest_path(name, root))
    except (OSError, ValueError):  # none yet (or unreadable)
        return False
    if key is not None and manifest.get("key") != key:
        return False
    current = output_digests(config, name, root)
    return ABSENT not in current.values() and manifest.get("outputs") == current
