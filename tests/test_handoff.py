"""The hand-off to a GPU machine that shares no disk with the pipeline (train.handoff).

The pipeline's project and each `gpu` worker's checkout are different folders (different absolute
paths, no file in common); they exchange inputs, outputs and checkpoints only through a real SSH/SFTP
server (OpenSSH's sshd, DVC's ssh remote from the dvc-ssh plugin), authenticating with a key held by
ssh-agent (SSH_AUTH_SOCK in each process's environment; no credential in params, .dvc/config or the
deployment). Prefect and MLflow are the team servers on PostgreSQL.
"""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import stop_process
from ssh_remote import start_ssh_server
from team_servers import client_env, kill_flow_run_processes, make_project, prefect_cli, psql_rows, run_pipeline, step, wait_for
from tuneline.pipeline import handoff
from tuneline.storage import file_md5

TINY = ["preprocess.sample_size=120", "cv.k=2", "select.baseline=false"]
# The hand-off is the point: one frozen-feature candidate (strategy pinned, so `auto` cannot resolve
# differently on the worker), nothing fine-tuned.
FEATURES = TINY + ["select.strategies=[feature_extraction]"]
# A tiny full fine-tune for the resume test: 48 training rows per fold, 6 steps, a checkpoint every 2.
FULL = TINY + ["select.strategies=[full]", "train.max_length=32", "train.batch_size=8", "train.max_steps=6",
               "train.checkpoint_every=2"]
POOL = ["train.work_pool=gpu", "train.handoff=team"]

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ssh(tmp_path_factory):
    yield from start_ssh_server(tmp_path_factory.mktemp("ssh-server"))


@pytest.fixture(scope="module")
def gpu_pool(team_prefect, tmp_path_factory):
    """The `gpu` process pool and the tuneline-finetune/gpu deployment (prefect.yaml); no worker yet."""
    checkout = make_project(tmp_path_factory.mktemp("deployer") / "tuneline", [])
    env = client_env(team_prefect, None, tmp_path_factory.mktemp("deployer-home"))
    prefect_cli(env, "work-pool", "create", "gpu", "--type", "process", "--overwrite")
    prefect_cli(env, "--no-prompt", "deploy", "--name", "gpu", cwd=checkout)
    yield env
    prefect_cli(env, "--no-prompt", "work-pool", "delete", "gpu")  # the pool tests create their own


def with_remote(project: Path, ssh, store: str) -> Path:
    """The project's committed DVC config names the team's remote: its URL, no credential."""
    subprocess.run(["dvc", "remote", "add", "team", ssh.url(store)], cwd=project, check=True, capture_output=True)
    return project


class GpuMachine:
    """A worker of the `gpu` pool running from its own checkout, with only the SSH agent to reach the store."""

    def __init__(self, name: str, checkout: Path, team_prefect, ssh, home: Path):
        self.name, self.checkout, self.prefect, self.log = name, checkout, team_prefect, home / "worker.log"
        home.mkdir(parents=True, exist_ok=True)
        env = client_env(team_prefect, None, home, TUNELINE_PROJECT_DIR=str(checkout), PREFECT_WORKER_QUERY_SECONDS="1",
                         PREFECT_LOGGING_LEVEL="INFO", HF_HUB_OFFLINE="1", **ssh.client_env())
        self._log = open(self.log, "w")
        self.proc = subprocess.Popen(["prefect", "worker", "start", "--pool", "gpu", "--name", name], env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: any(w["name"] == name and w.get("status") == "ONLINE"
                             for w in team_prefect.api("POST", "/work_pools/gpu/workers/filter", {})), 120, f"worker {name}")

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


def gpu_machine(name, tmp_path_factory, ssh, team_prefect, store: str) -> GpuMachine:
    base = tmp_path_factory.mktemp(f"{name}-machine")
    return GpuMachine(name, with_remote(make_project(base / "tuneline", []), ssh, store), team_prefect, ssh, base / "home")


def registered_metrics(backend: str, name: str) -> dict[str, float]:
    rows = psql_rows(backend, "SELECT m.key || '=' || m.value FROM metrics m JOIN model_versions v ON v.run_id = m.run_uuid "
                              f"WHERE v.name = '{name}' AND m.key LIKE 'test\\_%'")
    return {k: float(v) for k, v in (r.split("=", 1) for r in rows)}


@pytest.fixture(scope="module")
def handed_off(ssh, gpu_pool, team_prefect, team_mlflow, tmp_path_factory):
    """The pipeline in one folder, fine-tuning on a gpu worker in another, through the SSH remote."""
    project = with_remote(make_project(tmp_path_factory.mktemp("member") / "project",
                                       FEATURES + POOL + ["tracking.registered_model_name=tuneline-handoff",
                                                          "tracking.experiment=tuneline-handoff"]), ssh, "handoff")
    worker = gpu_machine("gpu-a", tmp_path_factory, ssh, team_prefect, "handoff")
    env = client_env(team_prefect, team_mlflow, tmp_path_factory.mktemp("member-home"), TUNELINE_POLL_SECONDS="1",
                     HF_HUB_OFFLINE="1", **ssh.client_env())
    start = time.time()
    try:
        run, seconds = run_pipeline(project, env)
    finally:
        worker.stop()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return SimpleNamespace(project=project, worker=worker, env=env, start=start, run=run, seconds=seconds)


def test_pipeline_and_gpu_worker_share_nothing_but_the_ssh_remote(handed_off, team_prefect, team_mlflow, ssh):
    project, worker = handed_off.project, handed_off.worker
    (child,) = team_prefect.flow_runs("tuneline-finetune", handed_off.start)
    assert child["work_pool_name"] == "gpu" and child["state"]["type"] == "COMPLETED"
    assert [step(t) for t in team_prefect.task_runs(child["id"])] == ["crossval", "refit"]
    # The deployment got content keys and the code digest, nothing that names the pipeline's machine.
    params = child["parameters"]
    assert params["root"] == "." and params["params"] is None and params.get("result_path") is None
    job = params["handoff"]
    assert set(job) == {"id", "remote", "task", "code", "params", "inputs"} and job["remote"] == "team"
    assert str(project) not in json.dumps(params) and "/tmp" not in json.dumps(params)
    assert all(re.fullmatch(r"[0-9a-f]{32}(\.dir)?", k) for k in [job["params"], *job["inputs"].values()])
    # The SSH credential stayed in each process's environment: not in the parameters, the deployment
    # or either project's DVC config (which names the remote by URL only).
    key = (ssh.root.parent / "client_key").read_text().strip().splitlines()[1]
    deployment = team_prefect.api("GET", "/deployments/name/tuneline-finetune/gpu")
    for where in (json.dumps(params), json.dumps(deployment), (project / ".dvc/config").read_text(),
                  (worker.checkout / ".dvc/config").read_text()):
        assert key not in where and str(ssh.agent_sock) not in where and "SSH_AUTH_SOCK" not in where

    # The worker worked in its own checkout, on inputs it pulled (byte-identical to the pipeline's).
    assert worker.checkout.resolve() != project.resolve()
    train = "data/processed/train.parquet"
    assert file_md5(worker.checkout / train) == file_md5(project / train) == job["inputs"][train]
    assert (worker.checkout / "models/model").is_dir() and (worker.checkout / "data/cv/comparison.json").is_file()
    objects = [p for p in (ssh.root / "handoff" / "files" / "md5").rglob("*") if p.is_file()]
    assert len(objects) >= 10  # inputs, params and outputs, as DVC stores them on the remote
    assert (ssh.root / "handoff" / "tuneline" / "jobs" / f"{job['id']}.json").is_file()

    # The pipeline pulled the outputs (verified) and registered from them.
    backend = team_mlflow.databases[0]
    assert psql_rows(backend, "SELECT version FROM model_versions WHERE name = 'tuneline-handoff'") == ["1"]
    assert "models:/tuneline-handoff/1" in handed_off.run.stdout
    pulled = json.loads((project / "data/eval/metrics.json").read_text())
    assert pulled == json.loads((worker.checkout / "data/eval/metrics.json").read_text())
    assert registered_metrics(backend, "tuneline-handoff") == pytest.approx(pulled, abs=1e-9)


def test_registered_model_equals_a_local_run_on_the_same_data(handed_off, team_prefect, team_mlflow, tmp_path):
    local = make_project(tmp_path / "local", FEATURES + ["tracking.registered_model_name=tuneline-handoff-local",
                                                         "tracking.experiment=tuneline-handoff"])
    run, _ = run_pipeline(local, handed_off.env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    backend = team_mlflow.databases[0]
    remote_metrics = registered_metrics(backend, "tuneline-handoff")
    assert len(remote_metrics) >= 5
    assert registered_metrics(backend, "tuneline-handoff-local") == pytest.approx(remote_metrics, abs=1e-9)
    from safetensors.numpy import load_file

    weights = sorted((local / "models/model").rglob("*.safetensors"))
    assert weights
    for f in weights:
        a, b = load_file(f), load_file(handed_off.project / "models/model" / f.relative_to(local / "models/model"))
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]).max() <= 1e-6 for k in a), f


def test_a_worker_killed_mid_fold_resumes_on_another_machine_from_the_pushed_checkpoint(
        ssh, gpu_pool, team_prefect, team_mlflow, tmp_path_factory):
    project = with_remote(make_project(tmp_path_factory.mktemp("resume-member") / "project",
                                       FULL + POOL + ["tracking.registered_model_name=tuneline-handoff-resume",
                                                      "tracking.experiment=tuneline-handoff"]), ssh, "resume")
    env = client_env(team_prefect, team_mlflow, tmp_path_factory.mktemp("resume-home"), TUNELINE_POLL_SECONDS="1",
                     HF_HUB_OFFLINE="1", **ssh.client_env())
    work = ssh.root / "resume" / "tuneline" / "work" / ".cache" / "finetune"
    first = gpu_machine("gpu-b", tmp_path_factory, ssh, team_prefect, "resume")
    second = None
    start = time.time()
    out = open(project.parent / "run.log", "w")
    proc = subprocess.Popen(["tuneline", "run"], cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # fold 1 finished and pushed, fold 2 mid-training with a checkpoint on the store: the machine dies
        wait_for(lambda: list(work.glob("*-fold1-*/checkpoints/step-*.pt")), 600, "a pushed checkpoint of fold 2")
        assert kill_flow_run_processes(first.proc)
        assert list(work.glob("*-fold0-*/result.json")) and not list(work.glob("*-fold1-*/result.json"))
        wait_for(lambda: [r["state"]["name"] for r in team_prefect.flow_runs("tuneline-finetune", start)] == ["Crashed"], 120,
                 "the killed flow run to be marked crashed")
        first.stop()
        second = gpu_machine("gpu-c", tmp_path_factory, ssh, team_prefect, "resume")
        rc = proc.wait(timeout=900)
    finally:
        stop_process(proc)
        out.close()
        if second is not None:
            second.stop()
    assert rc == 0, (project.parent / "run.log").read_text()[-5000:]

    attempts = team_prefect.flow_runs("tuneline-finetune", start)
    assert [a["state"]["name"] for a in attempts] == ["Crashed", "Completed"]
    logs = team_prefect.logs(attempts[1]["id"])
    assert any("reusing the finished" in line and "-fold0-" in line for line in logs), logs  # fold 1 not trained again
    resumed = [int(m.group(1)) for line in logs if "fold 2" in line and (m := re.search(r"at global step (\d+)", line))]
    assert resumed and resumed[0] >= 2, logs
    # the second machine never saw the first one's files: it fetched fold 1's result and fold 2's
    # newest checkpoint from the store, and finished the job in its own checkout
    assert any("fetched from ssh://" in line and "-fold1-" in line and "step-" in line for line in logs), logs
    assert list((second.checkout / ".cache/finetune").glob("*-fold0-*/result.json"))
    assert (second.checkout / "models/model").is_dir() and not (first.checkout / "models/model").exists()
    backend = team_mlflow.databases[0]
    assert psql_rows(backend, "SELECT version FROM model_versions WHERE name = 'tuneline-handoff-resume'") == ["1"]

    # The same cross-validation, never interrupted, on the pipeline's machine gives the same folds.
    reference = subprocess.run(["tuneline", "stage", "crossval", *sum((["--set", o] for o in FULL + ["paths.cv_dir=data/cv-ref"]), [])],
                               cwd=project, env=env, capture_output=True, text=True, timeout=900)
    assert reference.returncode == 0, reference.stdout[-3000:] + reference.stderr[-3000:]
    (resumed_folds,) = (project / "data/cv/candidates").glob("*/fold_metrics.json")
    uninterrupted = project / "data/cv-ref/candidates" / resumed_folds.parent.name / "fold_metrics.json"
    folds = json.loads(uninterrupted.read_text())
    assert len(folds) == 2 and json.loads(resumed_folds.read_text()) == [pytest.approx(f, abs=1e-6) for f in folds]


@pytest.mark.unit
def test_worker_refuses_a_job_from_other_code_before_pulling_anything(tmp_path):
    job = {"id": "j1", "remote": "team", "task": "classification", "code": "0" * 64, "params": "x", "inputs": {}}
    with pytest.raises(handoff.HandoffError, match=r"refusing job j1: this worker's tuneline code \(digest [0-9a-f]{12}\) "
                                                   r"differs from the pipeline's \(000000000000\)"):
        handoff.take(job, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_corrupted_object_on_the_remote_is_refused_and_nothing_is_replaced(ssh, tmp_path, monkeypatch):
    from tuneline.config import load_config

    a, b = (with_remote(make_project(tmp_path / n, []), ssh, "corrupt") for n in ("a", "b"))
    # without the agent in the environment the pipeline stops at its pre-flight, naming where and why
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "no-keys"))
    with pytest.raises(handoff.HandoffError, match=r"train.handoff='team': cannot reach ssh://127.0.0.1:\d+/.*corrupt: "
                                                   r"PermissionError: Permission denied"):
        handoff.check(load_config(None, POOL), a)
    monkeypatch.setenv("SSH_AUTH_SOCK", ssh.client_env()["SSH_AUTH_SOCK"])
    (a / "out" / "sub").mkdir(parents=True)
    (a / "out" / "sub" / "weights.bin").write_bytes(b"\x01" * 4096)
    (a / "out" / "config.json").write_text("{}")
    keys = handoff.Store(a, "team").push(["out"])
    assert handoff.Store(a, "team").digest(a / "out") == keys["out"]
    (b / "out").mkdir()
    (b / "out" / "old.txt").write_text("previous")
    blob = ssh.root / "corrupt" / "files" / "md5" / file_md5(a / "out/sub/weights.bin")[:2] / file_md5(a / "out/sub/weights.bin")[2:]
    blob.write_bytes(b"\x02" * 4096)  # same size, other bytes: what a bad disk or a partial upload leaves
    with pytest.raises(handoff.HandoffError, match=r"out: pulled content hashes to .*, not the job's " + keys["out"]):
        handoff.Store(b, "team").pull(keys)
    assert [p.name for p in (b / "out").iterdir()] == ["old.txt"]
    with pytest.raises(handoff.HandoffError, match=r"no such DVC remote in .*\.dvc/config; remotes there: local, team;"):
        handoff.Store(b, "elsewhere")


@pytest.mark.parametrize("spread", ["folds", "trials"])
def test_dask_workers_take_fold_inputs_from_the_remote_not_from_the_gpu_workers_folder(spread, ssh, prefect_server, tmp_path,
                                                                                       monkeypatch):
    """cv.task_runner=dask (fold jobs) or tune.task_runner=dask (trials) inside a hand-off job: each Dask
    worker pulls the job's inputs into its own folder (its local_directory) through the remote, and the
    folds (or every trial's folds) give the sequential numbers."""
    from distributed import LocalCluster

    from test_parallel_cv import cv_outputs
    from tuneline.config import load_config
    from tuneline.flows.finetune import finetune
    from tuneline.pipeline.shell import run_stage

    monkeypatch.setenv("SSH_AUTH_SOCK", ssh.client_env()["SSH_AUTH_SOCK"])
    pipeline_dir, gpu_dir, dask_checkout = (with_remote(make_project(tmp_path / n, []), ssh, "dask") for n in ("pipeline", "gpu", "dask"))
    monkeypatch.setenv("TUNELINE_PROJECT_DIR", str(dask_checkout))  # the Dask machine's checkout: the remote's URL
    if spread == "folds":
        two = ["select.strategies=[feature_extraction]", "select.baseline=true"]  # 2 candidates x 2 folds = 4 fold jobs
        on_dask = ["cv.task_runner=dask"]
    else:  # 2 trials x 2 folds, the study in a file the reference run does not share
        two = ["select.strategies=[feature_extraction]", "tune.enabled=true", "tune.n_trials=2", "tune.pruner=none",
               "tune.seed_repeats=0", "tune.parallel=2", "tune.enqueue=[{head_c: 0.2}]"]
        on_dask = ["tune.task_runner=dask", f"tune.storage=sqlite:///{tmp_path / 'dask.db'}"]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        config = load_config(None, TINY + two + POOL + on_dask + [f"cv.dask_address={cluster.scheduler_address}"])
        for name in ("ingest", "validate", "preprocess", "select"):
            run_stage(name, config, pipeline_dir)
        job = handoff.publish(config, pipeline_dir)
        finetune(root=str(gpu_dir), handoff=job)  # the flow, as the gpu worker runs it
        # (checked before the cluster closes: it removes its workers' folders)
        scratch = [Path(w.local_directory) / "tuneline" / job["id"] for w in cluster.workers.values()]
        train = "data/processed/train.parquet"
        used = [d for d in scratch if (d / train).is_file()]
        assert used, f"no Dask worker pulled the inputs into its own folder ({scratch})"
        assert all(file_md5(d / train) == job["inputs"][train] for d in used)
        assert not any((d / "data/cv").exists() for d in used)  # the fold results went back through Dask, not files
    reference = [] if spread == "folds" else [f"tune.storage=sqlite:///{tmp_path / 'seq.db'}"]
    run_stage("crossval", load_config(None, TINY + two + reference), pipeline_dir)  # the plain sequential loop, for reference
    # (the study's storage, recorded with the search, is the one thing meant to differ)
    assert json.dumps(cv_outputs(gpu_dir)).replace("dask.db", "seq.db") == json.dumps(cv_outputs(pipeline_dir))
    if spread == "trials":
        def trial_folds(root: Path) -> dict:
            trials = json.loads(next((root / "data/cv/tune").glob("*/trials.json")).read_text())
            return {t["params"]["head_c"]: [r["metrics"] for r in t["folds"]] for t in trials}

        assert sorted(trial_folds(gpu_dir)) == [0.2, 1.0] and trial_folds(gpu_dir) == trial_folds(pipeline_dir)


def test_restore_fetches_each_work_areas_result_or_else_its_newest_checkpoint(ssh, tmp_path, monkeypatch):
    monkeypatch.setenv("SSH_AUTH_SOCK", ssh.client_env()["SSH_AUTH_SOCK"])
    a, b = (with_remote(make_project(tmp_path / n, []), ssh, "restore") for n in ("a", "b"))
    store = handoff.Store(a, "team")
    written = []
    for rel in ("fold0-x/checkpoints/step-000000002.pt", "fold0-x/result.json",
                "fold1-y/checkpoints/step-000000002.pt", "fold1-y/checkpoints/step-000000004.pt"):
        path = a / ".cache/finetune" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)
        store.publish_work(path)
        written.append(path)
    store.publish_work(written[-1])  # a name is written once: the second push of a step is a no-op
    fetched = handoff.Store(b, "team").restore_work()
    assert fetched == [".cache/finetune/fold0-x/result.json", ".cache/finetune/fold1-y/checkpoints/step-000000004.pt"]
    assert (b / fetched[1]).read_text() == "fold1-y/checkpoints/step-000000004.pt"
    assert handoff.Store(b, "team").restore_work() == []  # already here
