"""What registrations that died (their process is gone: tuneline.tracking.owner) leave in a store: a
run left RUNNING, maybe a version without the registration key (tagged last), child runs, folders.
`retire_leftovers` (every register step) completes a dead run whose versions all carry the key and
fails any other, deleting its versions; `find` / `remove` (`tuneline gc`) also list and delete the
folders, logged models and runs they left.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from typing import Optional

from tuneline.tracking import runs as tracking
from tuneline.tracking.owner import why_dead

log = logging.getLogger(__name__)

RETIRED = "tuneline.retired"  # why a run was marked FAILED by a later one


def _dead_runs(c, exp_id: str, view) -> list[tuple[object, str]]:
    runs = c.search_runs([exp_id], filter_string=f"tags.`{tracking.REGISTRATION_KEY}` LIKE '%' and attributes.status != 'FINISHED'",
                         run_view_type=view, order_by=["attributes.start_time ASC"])
    return [(r, why) for r in runs if (why := why_dead(r)) is not None]


def _children(c, exp_id: str, run_id: str, view) -> list:
    kids = c.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'", run_view_type=view)
    return [r for k in kids for r in (k, *_children(c, exp_id, k.info.run_id, view))]


def _complete(run, versions) -> bool:
    """Killed after its last registry write (the key): nothing is missing but the run's end."""
    return run.info.status == "RUNNING" and bool(versions) and all(tracking.REGISTRATION_KEY in v.tags for v in versions)


def _fail(c, runs: list, why: str) -> None:
    """The registration run and its children (folds, candidates, even those that ended well) FAILED:
    what they belong to never completed."""
    for r in runs:
        if r.info.lifecycle_stage == "active":
            c.set_tag(r.info.run_id, RETIRED, why[:250])
            if r.info.status not in ("FAILED", "KILLED"):
                c.set_terminated(r.info.run_id, "FAILED")


def _settle(c, exp_id: str, run, why: str, versions: list) -> None:
    if _complete(run, versions):
        c.set_terminated(run.info.run_id, "FINISHED")
        log.warning("completed the registration of %s (run %s: %s, after its last write)",
                    ", ".join(f"{v.name} v{v.version}" for v in versions), run.info.run_id, why)
        return
    for v in versions:
        log.warning("deleting half-registered %s version %s (run %s %s)", v.name, v.version, run.info.run_id, why)
        c.delete_model_version(v.name, v.version)
    kids = _children(c, exp_id, run.info.run_id, _view("ACTIVE_ONLY"))
    _fail(c, [run, *kids], why)
    log.warning("marked registration run %s FAILED (%s), and its %d child runs; `tuneline gc` lists the files it left",
                run.info.run_id, why, len(kids))


def _view(name: str):
    from mlflow.entities import ViewType

    return getattr(ViewType, name)


def retire_leftovers(uri: str, experiment: str) -> None:
    """Complete or retire every dead registration of `experiment` (see the module's docstring)."""
    c = tracking.client(uri)
    if (exp := c.get_experiment_by_name(experiment)) is None:
        return
    for run, why in _dead_runs(c, exp.experiment_id, _view("ACTIVE_ONLY")):
        if RETIRED not in run.data.tags:
            _settle(c, exp.experiment_id, run, why, c.search_model_versions(f"run_id = '{run.info.run_id}'"))


# ---- tuneline gc ---------------------------------------------------------------------------------

@dataclass
class Leftover:
    run: object
    why: str
    versions: list = field(default_factory=list)
    children: list = field(default_factory=list)
    models: list = field(default_factory=list)  # MLflow 3 logged models (they hold the model files)
    folders: list[tuple[str, Optional[int]]] = field(default_factory=list)  # (local path or URI, bytes or None)

    @property
    def completable(self) -> bool:
        return _complete(self.run, self.versions)


def _folder(artifact_uri: str, own_name: str) -> Optional[tuple[str, Optional[int]]]:
    """A run's or logged model's folder and its size; None when nothing is there any more."""
    if (path := tracking.store.local_path(artifact_uri)) is None:
        return artifact_uri, None  # a server's store: removed through MLflow, size unknown here
    path = path.parent if path.name == "artifacts" and path.parent.name == own_name else path
    if not path.exists():
        return None
    return str(path), sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def find(uri: str, exp_id: str) -> list[Leftover]:
    c = tracking.client(uri)
    found = []
    for run, why in _dead_runs(c, exp_id, _view("ALL")):
        lo = Leftover(run, run.data.tags.get(RETIRED, why), c.search_model_versions(f"run_id = '{run.info.run_id}'"),
                      _children(c, exp_id, run.info.run_id, _view("ALL")),
                      c.search_logged_models([exp_id], filter_string=f"source_run_id = '{run.info.run_id}'"))
        lo.folders = [f for f in [*(_folder(r.info.artifact_uri, r.info.run_id) for r in (run, *lo.children)),
                                  *(_folder(m.artifact_location, m.model_id) for m in lo.models)] if f is not None]
        if lo.versions or lo.folders or lo.models or run.info.lifecycle_stage == "active":
            found.append(lo)
    return found


def remove(uri: str, exp_id: str, lo: Leftover) -> None:
    """Complete a completable registration; otherwise delete its versions, folders, logged models and runs."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    c = tracking.client(uri)
    if lo.completable:
        _settle(c, exp_id, lo.run, lo.why, lo.versions)
        return
    for v in lo.versions:
        c.delete_model_version(v.name, v.version)
    _fail(c, [lo.run, *lo.children], lo.why)
    for where, size in lo.folders:
        if size is None:
            get_artifact_repository(where).delete_artifacts()
        else:
            shutil.rmtree(where, ignore_errors=True)
    for m in lo.models:
        c.delete_logged_model(m.model_id)
    for r in (*lo.children, lo.run):
        if r.info.lifecycle_stage == "active":
            c.delete_run(r.info.run_id)


def _size(n: Optional[int]) -> str:
    if n is None:
        return "size unknown"
    return next(f"{n / 1024 ** i:.1f} {unit}" for i, unit in ((3, "GB"), (2, "MB"), (1, "KB"), (0, "B")) if n >= 1024 ** i or i == 0)


def gc(uri: str, experiment: str, apply: bool = False) -> list[str]:
    """What `tuneline gc` prints: each leftover registration of `experiment` (its run, versions and
    folders with their sizes), then a total; with `apply`, they are also completed or removed."""
    shown = tracking.redact(uri)
    if (db := tracking.store.sqlite_path(uri)) is not None and not db.is_file():
        return [f"no tracking store at {db}: nothing to clean"]
    if (exp := tracking.client(uri).get_experiment_by_name(experiment)) is None:
        return [f"no experiment {experiment!r} in {shown}: nothing to clean"]
    if not (found := find(uri, exp.experiment_id)):
        return [f"nothing to clean in experiment {experiment!r} of {shown}"]
    lines = []
    for lo in found:
        r = lo.run.info
        lines.append(f"run {r.run_id} ({r.run_name}): {lo.why}" + (", deleted" if r.lifecycle_stage == "deleted" else "")
                     + (f"; {len(lo.children)} child runs" if lo.children else ""))
        lines += [f"  version {v.name} v{v.version}" + ("" if tracking.REGISTRATION_KEY in v.tags else
                                                          " (half-registered: no registration key)") for v in lo.versions]
        lines += [f"  {where}  ({_size(size)})" for where, size in lo.folders]
        if lo.completable:
            lines.append("  only the run's end is missing: it will be marked FINISHED, its version kept")
    total = _size(sum(size or 0 for lo in found for _, size in lo.folders))
    if not apply:
        return lines + [f"{len(found)} leftover registration(s), {total}: `tuneline gc --apply` removes them"]
    for lo in found:
        remove(uri, exp.experiment_id, lo)
    return lines + [f"removed {len(found)} leftover registration(s), {total}"]
