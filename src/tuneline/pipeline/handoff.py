"""The hand-off to a work pool that shares no disk with the pipeline: both sides meet on a DVC remote
(README, "Two machines that share no disk"). Inputs, outputs and the resolved params travel as DVC
objects (content-addressed); checkpoints and job records as immutable named files under
`<remote>/tuneline/`. Credentials never travel: each machine's environment authenticates.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import uuid
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator, Optional

from tuneline.config import Config, load_config, save_config
from tuneline.pipeline import fingerprint
from tuneline.pipeline.stages import StageError, outputs
from tuneline.storage import atomic_path, read_json, write_json

log = logging.getLogger(__name__)

STEPS = ("crossval", "refit")
PARAMS = ".cache/handoff/params.yaml"  # the resolved params, as handed to the worker
PREFIX = "tuneline"  # beside DVC's files/md5/ on the remote: work/ (checkpoints), jobs/ (records)
CHECKPOINT_GLOB = "step-*.pt"
PROJECT_DIR = "TUNELINE_PROJECT_DIR"  # a worker machine's checkout (prefect.yaml's pull step uses it too)


class HandoffError(StageError):
    """The exchange through the remote failed: no such remote, a missing or corrupt object, other code."""


class Store:
    """One project's view of the hand-off remote: DVC objects by hash, plus named immutable files."""

    def __init__(self, root: Path, remote: str):
        from dvc.exceptions import NotDvcRepoError
        from dvc.repo import Repo

        self.root, self.name = Path(root).resolve(), remote
        try:
            # no_scm: the hand-off moves objects only; a worker's checkout need not be a git clone
            self.repo = Repo(str(self.root), config={"core": {"no_scm": True}})
        except NotDvcRepoError:
            raise HandoffError(f"train.handoff={remote!r}: {self.root} is not a DVC project (no .dvc/); "
                               "run `dvc init` there") from None
        known = list(self.repo.config.get("remote", {}))
        if remote not in known:
            raise HandoffError(f"train.handoff={remote!r}: no such DVC remote in {self.root / '.dvc/config'}; "
                               f"remotes there: {', '.join(known) or 'none'}; add it on both machines with "
                               f"`dvc remote add {remote} ssh://host/path` (credentials stay in each machine's environment)")
        self.remote = self.repo.cloud.get_remote(remote)
        self.fs, self.cache = self.remote.fs, self.repo.cache.local

    def url(self) -> str:
        return self.fs.unstrip_protocol(self.remote.path)

    # -- content-addressed: DVC objects ------------------------------------------------------------
    def push(self, rels: list[str]) -> dict[str, str]:
        """Push files/folders (relative to the root) to the remote; {rel: DVC md5 key}."""
        from dvc_data.hashfile.build import build
        from dvc_data.hashfile.transfer import transfer
        from dvc_data.hashfile.tree import Tree

        keys, ids = {}, set()
        for rel in rels:
            path = self.root / rel
            if not path.exists():
                raise HandoffError(f"{path}: missing, so it cannot be handed to the work pool")
            staging, _, obj = build(self.cache, str(path), self.cache.fs, "md5")
            transfer(staging, self.cache, {obj.hash_info}, shallow=False, hardlink=False)
            ids.add(obj.hash_info)
            if isinstance(obj, Tree):
                ids |= {hi for _, (_, hi) in obj.iteritems()}
            keys[rel] = obj.hash_info.value
        self._transfer(ids, push=True)
        return keys

    def pull(self, keys: dict[str, str]) -> None:
        """Fetch objects by key and put each at its path under the root, after checking its hash;
        a path is replaced only by content that matches its key (nothing half-written)."""
        from dvc_data.hashfile import load
        from dvc_data.hashfile.checkout import checkout
        from dvc_data.hashfile.hash_info import HashInfo

        infos = {rel: HashInfo("md5", key) for rel, key in keys.items()}
        self._transfer(set(infos.values()))
        # a folder's listing first, then the files it names
        self._transfer({hi for info in infos.values() if info.isdir for _, (_, hi) in load(self.cache, info).iteritems()})
        for rel, info in infos.items():
            if (self.root / rel).exists() and self.digest(self.root / rel) == info.value:
                continue  # already here, byte for byte (a Dask worker's second fold job)
            with atomic_path(self.root / rel) as tmp:
                checkout(str(tmp), self.cache.fs, load(self.cache, info), self.cache)
                if (found := self.digest(tmp)) != info.value:
                    raise HandoffError(f"{rel}: pulled content hashes to {found}, not the job's {info.value}")

    def _transfer(self, ids: set, push: bool = False) -> None:
        result = (self.repo.cloud.push if push else self.repo.cloud.pull)(ids, remote=self.name)
        if result.failed:
            n, some = len(result.failed), sorted(h.value for h in result.failed)[:3]
            raise HandoffError(f"pushing to {self.url()} failed for {n} object(s): {some}" if push else
                               f"{self.url()} lacks {n} object(s) the job names: {some} (pushed to another remote, or removed)")

    def digest(self, path: Path) -> str:
        """The DVC md5 of a file or folder, recomputed from its bytes."""
        from dvc_data.hashfile.build import build

        return build(self.cache, str(path), self.cache.fs, "md5", dry_run=True)[2].hash_info.value

    # -- named immutable files: checkpoints, job records -------------------------------------------
    def _key(self, *parts: str) -> str:
        return self.fs.join(self.remote.path, PREFIX, *parts)

    def put_once(self, local: Path, *parts: str) -> bool:
        """Upload `local` under `parts` unless that name exists (a name is written once, atomically)."""
        dest = self._key(*parts)
        if self.fs.exists(dest):
            return False
        self.fs.makedirs(self.fs.parent(dest), exist_ok=True)
        tmp = f"{dest}.tmp-{uuid.uuid4().hex}"
        self.fs.put_file(str(local), tmp)
        self.fs.mv(tmp, dest)
        return True

    def get(self, local: Path, *parts: str) -> bool:
        src = self._key(*parts)
        if not self.fs.exists(src):
            return False
        with atomic_path(local) as tmp:
            self.fs.get_file(src, str(tmp))
        return True

    def publish_work(self, path: Path) -> None:
        """checkpoints.publishing's listener: a checkpoint or result just written under the root."""
        rel = Path(path).resolve().relative_to(self.root)
        if self.put_once(path, "work", *rel.parts):
            log.info("pushed %s to %s", rel, self.url())

    def restore_work(self) -> list[str]:
        """Fetch, for every work area on the remote, its result or else its newest checkpoint."""
        base = self._key("work")
        if not self.fs.exists(base):
            return []
        found = [p[len(base):].lstrip("/") for p in self.fs.find(base) if ".tmp-" not in p]
        results = [r for r in found if Path(r).name == "result.json"]
        finished, newest = {str(Path(r).parent) for r in results}, {}
        for rel in found:
            area = str(Path(rel).parent.parent)
            if Path(rel).match(CHECKPOINT_GLOB) and area not in finished:
                newest[area] = max(newest.get(area, ""), rel)
        fetched = [rel for rel in sorted({*results, *newest.values()})
                   if not (self.root / rel).exists() and self.get(self.root / rel, "work", *Path(rel).parts)]
        if fetched:
            log.info("fetched from %s: %s", self.url(), ", ".join(fetched))
        return fetched


# -- the pipeline's side ----------------------------------------------------------------------------
def check(config: Config, root: Path) -> None:
    """Pre-flight, before any step: the remote is configured here and answers."""
    store = Store(root, config.train.handoff)
    try:
        store.fs.exists(store.remote.path)
    except Exception as exc:  # asyncssh / botocore / OSError: whatever the transport raises
        raise HandoffError(f"train.handoff={config.train.handoff!r}: cannot reach {store.url()}: {type(exc).__name__}: {exc} "
                           "(credentials come from this machine's environment: ssh-agent / ~/.ssh for ssh)") from None


def publish(config: Config, root: Path) -> dict:
    """Push the fine-tune's inputs and the resolved params; the job's deployment parameter."""
    store = Store(root, config.train.handoff)
    params = store.root / PARAMS
    params.parent.mkdir(parents=True, exist_ok=True)
    save_config(config, params)
    keys = store.push([*fingerprint.group_inputs(STEPS, config), PARAMS])
    return {"id": uuid.uuid4().hex, "remote": config.train.handoff, "task": config.task,
            "code": fingerprint.code_digest(config.task), "params": keys.pop(PARAMS), "inputs": keys}


def collect(config: Config, root: Path, job: dict) -> dict:
    """After the worker finished: pull its outputs (hash-checked) and record them as this project's."""
    store = Store(root, job["remote"])
    record_path = store.root / ".cache" / "handoff" / f"job-{job['id']}.json"
    if not store.get(record_path, "jobs", f"{job['id']}.json"):
        raise HandoffError(f"the work pool finished job {job['id']} but left no record on {store.url()}")
    try:
        record = read_json(record_path)
    finally:
        record_path.unlink(missing_ok=True)
    store.pull(record["outputs"])
    for name in STEPS:
        fingerprint.record(name, config, store.root, fingerprint.stage_key(name, config, store.root))
    return record["results"]


# -- the worker's side ------------------------------------------------------------------------------
def take(job: dict, root: Path) -> tuple[Store, Config]:
    """Check the code, pull the job's inputs into this worker's project, fetch pushed checkpoints."""
    if (mine := fingerprint.code_digest(job["task"])) != job["code"]:
        raise HandoffError(f"refusing job {job['id']}: this worker's tuneline code (digest {mine[:12]}) differs from the "
                           f"pipeline's ({job['code'][:12]}); install the pipeline's commit on the worker and retry")
    store = Store(root, job["remote"])
    store.pull({PARAMS: job["params"], **job["inputs"]})
    config = load_config(store.root / PARAMS)
    store.restore_work()
    return store, config


_job: ContextVar[Optional[dict]] = ContextVar("tuneline_handoff_job", default=None)


@contextlib.contextmanager
def running(job: dict, store: Store) -> Iterator[None]:
    """While a worker runs `job`: push each checkpoint as it lands, and let fold jobs sent to a
    Dask cluster (cv.task_runner=dask) take their inputs from the remote too (`on_dask`)."""
    from tuneline.engine import checkpoints  # torch: not for a run that stops before training

    token = _job.set(job)
    try:
        with checkpoints.publishing(store.publish_work):
            yield
    finally:
        _job.reset(token)


def on_dask(run):
    """`run` (a FoldRun) as a Dask worker of the running job should call it; unchanged outside a job."""
    job = _job.get()
    return functools.partial(_dask_fold, run, job) if job is not None and hasattr(run, "at") else run


def _dask_fold(run, job: dict, item: dict) -> dict:
    """A fold job on a Dask worker: in that worker's own folder (its local_directory), on inputs pulled
    from the remote exactly as the GPU worker pulled them, pushing its checkpoints to the remote."""
    from distributed import get_worker

    from tuneline.engine import checkpoints

    if not (checkout := os.environ.get(PROJECT_DIR)):
        raise HandoffError(f"a Dask worker of a hand-off job needs {PROJECT_DIR}: its machine's checkout of the "
                           f"project, whose .dvc/config names the remote {job['remote']!r}")
    root = Path(get_worker().local_directory) / "tuneline" / job["id"]
    if not (root / ".dvc" / "config").is_file():
        _copy_remote_config(Path(checkout), root, job["remote"])
    store, _ = take(job, root)
    with checkpoints.publishing(store.publish_work):
        return run.at(store.root)(item)


def _copy_remote_config(src_root: Path, root: Path, remote: str) -> None:
    """Give a fresh scratch project the remote's entry (URL and options, which hold no credential)."""
    from dvc.repo import Repo

    entry = dict(Store(src_root, remote).repo.config["remote"][remote])
    root.mkdir(parents=True, exist_ok=True)
    repo = Repo.init(str(root), no_scm=True, force=True)
    with repo.config.edit() as conf:
        conf["remote"][remote] = entry
    repo.close()


def finish(store: Store, config: Config, job: dict, results: dict) -> None:
    """Push the steps' outputs and the job record that names them (written last: the commit point)."""
    keys = store.push([o for name in STEPS for o in outputs(name, config.paths)])
    record = store.root / ".cache" / "handoff" / f"job-{job['id']}.json"
    write_json(record, {"results": results, "outputs": keys, "code": job["code"]})
    store.put_once(record, "jobs", f"{job['id']}.json")
    os.remove(record)


def job_parameters(job: Optional[dict]) -> dict:
    """The deployment parameters of a hand-off job: keys only, never a path or a credential."""
    return {"params": None, "overrides": [], "root": ".", "handoff": job}
