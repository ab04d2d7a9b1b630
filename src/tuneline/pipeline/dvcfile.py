"""dvc.yaml, written from the stage table for one task: `tuneline dvc-yaml` (the committed file is
the classification task's; a test keeps it equal). Paths stay `${paths.*}` templates of params.yaml,
`params:` lists exactly the keys the stage reads for the task, and the code deps are what the Prefect
cache's code digest hashes: the shared packages and the task's own (never another task's).
"""
from __future__ import annotations

from pathlib import Path

import yaml

from tuneline import plugins
from tuneline.pipeline.stages import METRICS, ORDER, inputs, outputs

HEADER = """\
# The pipeline DAG for task: {task}, written by `tuneline dvc-yaml` from tuneline.pipeline.stages (edit
# there, not here). Each stage runs the same step as the Prefect flow; paths come from params.yaml's
# `paths` section; `params:` lists exactly the keys the stage reads for this task.
"""
SHARED_PACKAGES = ("pipeline", "engine", "tracking")
UNCACHED = ("select", "register", "promote")  # small files that are re-made, never restored from the DVC cache


class _Templates:
    """Stands in for PathsConfig: every path as its dvc.yaml template."""

    def __getattr__(self, name: str) -> str:
        return f"${{paths.{name}}}"


def _modules() -> list[str]:
    """The top-level modules (config, storage, tables, ...): shared by every task."""
    import tuneline

    return sorted(p.name for p in Path(tuneline.__file__).parent.glob("*.py") if p.name != "__init__.py")


def user_data(config) -> list[str]:
    """The user's own data files (data.source, data.test_source) as dvc.yaml deps of ingest, so that a
    changed file, or another path in params.yaml, re-runs ingest. Paths outside the project are DVC's
    external deps; the packaged default is no file of the project's."""
    return [f"${{data.{key}}}" for key in ("source", "test_source")
            if getattr(config.data, key) is not None and Path(getattr(config.data, key)).is_file()]


def stages(config) -> dict:
    from tuneline.pipeline.fingerprint import reads

    task = config.task
    plugin, paths, out = plugins.get(task), _Templates(), {}
    for name in ORDER:
        made = outputs(name, paths)
        metric = [m for m in made if m.endswith(METRICS.get(name, "\0"))]
        outs = [m for m in made if m not in metric]
        code = [f"src/tuneline/{p}" for p in (*SHARED_PACKAGES, *_modules())] + ["src/" + plugin.package.replace(".", "/")]
        data = user_data(config) if name == "ingest" else []
        external = plugin.external_inputs(config, name)
        data += [e for e in external if not e.startswith("models:/")]
        stage = {"cmd": f"tuneline stage {name}", "deps": code + data + inputs(name, paths), "params": list(reads(task, name)),
                 "outs": [{o: {"cache": False}} for o in outs] if name in UNCACHED else outs}
        if any(e.startswith("models:/") for e in external):
            stage["always_changed"] = True  # an alias can move: look every time; later stages re-run only if select's output changed
        if metric:
            stage["metrics"] = [{m: {"cache": False}} for m in metric]
        out[name] = stage
    return out


def render(config) -> str:
    """dvc.yaml for the project's task and data files."""
    return HEADER.format(task=config.task) + yaml.safe_dump({"stages": stages(config)}, sort_keys=False, width=120)


def check_current(config, root: Path) -> None:
    """Warn (before ingest) when dvc.yaml does not declare what this project's params need."""
    path = Path(root) / "dvc.yaml"
    if path.is_file() and path.read_text(encoding="utf-8") != render(config):
        import logging

        logging.getLogger(__name__).warning(
            "%s is not the DAG for task %r with data.source %r (its params, code or data deps differ): run "
            "`tuneline dvc-yaml` so that DVC tracks what this project reads", path, config.task, config.data.source)
