"""Orchestration building blocks without servers: checkpoint resume, step keys and cache validity,
idempotent registration (SQLite MLflow), the tracking pre-flight, prefect.yaml."""
from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO, free_port

pytestmark = pytest.mark.unit


def _project(root: Path):
    from tuneline.config import load_config

    (root / "data/raw").mkdir(parents=True)
    (root / "data/raw/dataset.parquet").write_bytes(b"rows v1")
    return load_config(None, [])


def test_step_key_follows_inputs_params_and_code_but_not_where_it_runs(tmp_path):
    from tuneline.config import load_config
    from tuneline.pipeline.fingerprint import stage_key

    config = _project(tmp_path)
    key = stage_key("validate", config, tmp_path)
    assert stage_key("validate", config, tmp_path) == key
    assert stage_key("validate", load_config(None, ["promote.min_delta=0.1"]), tmp_path) == key  # not a section it reads
    assert stage_key("validate", load_config(None, ["validate.min_rows_per_class=5"]), tmp_path) != key
    explicit = ["train.strategy=partial", "train.precision=fp32"]
    crossval = stage_key("crossval", load_config(None, explicit), tmp_path)
    assert stage_key("crossval", load_config(None, explicit + ["train.work_pool=gpu", "train.checkpoint_every=7"]), tmp_path) == crossval
    assert stage_key("crossval", load_config(None, explicit + ["train.learning_rate=0.001"]), tmp_path) != crossval
    # with `auto`, the pool's hardware decides what trains: its runs never share the local entry
    assert stage_key("crossval", load_config(None, ["train.work_pool=gpu"]), tmp_path) != stage_key("crossval", config, tmp_path)
    (tmp_path / "data/raw/dataset.parquet").write_bytes(b"rows v2")
    assert stage_key("validate", config, tmp_path) != key


def test_a_cached_result_counts_only_while_its_outputs_are_on_disk_unchanged(tmp_path):
    from tuneline.pipeline import fingerprint

    config = _project(tmp_path)
    out = tmp_path / "data/validation"
    out.mkdir(parents=True)
    (out / "report.json").write_text("{}")
    key = fingerprint.stage_key("validate", config, tmp_path)
    assert not fingerprint.outputs_current("validate", config, tmp_path, key)  # never recorded
    fingerprint.record("validate", config, tmp_path, key)
    assert fingerprint.outputs_current("validate", config, tmp_path, key)
    assert not fingerprint.outputs_current("validate", config, tmp_path, "another key")
    (out / "report.json").write_text('{"edited": true}')
    assert not fingerprint.outputs_current("validate", config, tmp_path, key)
    fingerprint.record("validate", config, tmp_path, key)
    (out / "report.json").unlink()
    assert not fingerprint.outputs_current("validate", config, tmp_path, key)


def test_step_inputs_are_dvc_yaml_deps_other_than_code():
    from test_pipeline_smoke import resolve

    from tuneline.config import Config
    from tuneline.pipeline.stages import inputs

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        data_deps = [resolve(d) for d in stage.get("deps", []) if not resolve(d).startswith("src/")]
        assert data_deps == inputs(name, Config().paths), name


def test_preflight_names_the_unreachable_server_without_its_credentials(tmp_path):
    from tuneline.tracking.runs import TrackingUnavailable, check_tracking, redact

    port = free_port()
    with pytest.raises(TrackingUnavailable, match=rf"http://127\.0\.0\.1:{port} is unreachable") as err:
        check_tracking(f"http://alice:s3cret@127.0.0.1:{port}", timeout=0.5)
    assert "s3cret" not in str(err.value)
    assert redact("https://u:p@host:5000/x") == "https://host:5000/x" and redact("sqlite:///a.db") == "sqlite:///a.db"
    assert redact("connection to postgresql://u:p@db:5432/m failed") == "connection to postgresql://db:5432/m failed"
    with pytest.raises(TrackingUnavailable, match="does not exist"):
        check_tracking(f"sqlite:///{tmp_path}/missing/mlflow.db")
    check_tracking(f"sqlite:///{tmp_path}/mlflow.db")


@contextlib.contextmanager
def local_server(status, certfile=None):
    """A local HTTP(S) server (no MLflow) answering GET with `status(headers)`; yields host:port."""
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status(self.headers))
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if certfile:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certfile)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_preflight_sends_the_credentials_of_the_uri_or_of_the_environment(monkeypatch):
    """A server that wants basic auth (a local one, no MLflow): the URI's own user:password@ part is
    sent, though urllib drops it; without credentials the server's refusal is named."""
    import base64

    from tuneline.tracking.runs import TrackingUnavailable, check_tracking

    expected = "Basic " + base64.b64encode(b"bot:s3cret").decode()
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    with local_server(lambda headers: 200 if headers.get("Authorization") == expected else 401) as host:
        check_tracking(f"http://bot:s3cret@{host}", timeout=0.5)
        with pytest.raises(TrackingUnavailable, match="refused a client without credentials"):
            check_tracking(f"http://{host}", timeout=0.5)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bot")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
        check_tracking(f"http://{host}", timeout=0.5)


def test_preflight_trusts_what_mlflow_is_told_to_trust_over_https(tmp_path, monkeypatch):
    """A server with a self-signed certificate: refused at once with the variable to set, then
    accepted through MLFLOW_TRACKING_SERVER_CERT_PATH or MLFLOW_TRACKING_INSECURE_TLS, as MLflow's
    own client would be."""
    import time

    from tuneline.tracking.runs import TrackingUnavailable, check_tracking

    pem = tmp_path / "server.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(pem), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True)
    pem.write_text(pem.read_text() + (tmp_path / "cert.pem").read_text())
    for var in ("MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_CLIENT_CERT_PATH"):
        monkeypatch.delenv(var, raising=False)
    with local_server(lambda headers: 200, certfile=str(pem)) as host:
        started = time.monotonic()
        with pytest.raises(TrackingUnavailable, match="TLS certificate is not trusted .*MLFLOW_TRACKING_SERVER_CERT_PATH"):
            check_tracking(f"https://{host}", timeout=30)
        assert time.monotonic() - started < 10  # not retried until the timeout
        monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(tmp_path / "cert.pem"))
        check_tracking(f"https://{host}", timeout=0.5)
        monkeypatch.delenv("MLFLOW_TRACKING_SERVER_CERT_PATH")
        monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "true")
        check_tracking(f"https://{host}", timeout=0.5)


def test_run_summaries_name_the_tracking_store_without_its_credentials():
    """Every task's end-of-run summary redacts the store itself, whatever the registration holds."""
    from tuneline.config import load_config
    from tuneline.pipeline.shell import run_summary

    reg = {"model_uri": "models:/m/3", "run_id": "r1", "experiment_id": "7", "tracking_uri": "https://alice:s3cret@mlflow.example:5000",
           "base": {"id": "smollm2", "sha256": "ab" * 32}}
    decision = {"promote": True, "reason": "first model", "champion_uri": "models:/m@champion"}
    stats = {"mean": 0.8, "std": 0.05, "ci95_low": 0.7, "ci95_high": 0.9}
    winner = {"name": "MiniLM:partial", "strategy": "partial", "training": {"strategy": "partial", "precision": "bf16"},
              "vs_baseline": {"diff": 0.04, "p": 0.012}}
    test = {"test_accuracy": 0.81, "test_f1_macro": 0.8, "test_majority_rate": 0.5}
    classifier = run_summary(load_config(None, []), {
        "register": reg, "promote": decision, "crossval": {"k": 2, "metrics": {"f1_macro": stats}, "winner": winner}, "refit": test}, 3.0)
    assert any("MiniLM:partial (partial, bf16)" in line and "p=0.012" in line for line in classifier)
    assert any("test accuracy : 0.8100" in line and "majority class 0.5000" in line for line in classifier)
    baseline_won = run_summary(load_config(None, []), {
        "register": reg, "promote": decision, "crossval": {"k": 2, "metrics": {"f1_macro": stats},
                                                           "winner": {"name": "tfidf-logreg", "strategy": "baseline"}},
        "refit": test}, 3.0)
    assert any("no pre-trained candidate beat the TF-IDF baseline" in line for line in baseline_won)
    llm = run_summary(load_config(None, ["task=preference"]), {
        "register": reg, "promote": decision, "crossval": {"metric": "preference_accuracy", "method": "dpo", "mode": "holdout", "k": 1,
                                                           "folds_note": "holdout, 1 split", "metrics": {"preference_accuracy": stats}},
        "refit": {"test_preference_accuracy": 0.75, "train_samples_per_second": 2.0}}, 3.0)
    assert any("preference_accuracy" in line and "holdout, 1 split" in line for line in llm)
    for lines in (classifier, llm):
        ui = next(line for line in lines if "MLflow UI" in line)
        assert "https://mlflow.example:5000" in ui and "s3cret" not in "\n".join(lines) and "alice" not in "\n".join(lines)
        assert "#/experiments/7/runs?viewStateShareKey=tuneline" in "\n".join(lines)


def test_registration_is_reused_for_the_same_inputs_and_half_registrations_are_retired(tmp_path):
    from mlflow import MlflowClient

    from tuneline.tracking import runs as tracking
    from tuneline.tracking.cleanup import retire_leftovers

    uri, name, key = f"sqlite:///{tmp_path / 'mlflow.db'}", "m", "k1"
    client = MlflowClient(uri)
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    client.create_registered_model(name)
    assert tracking.find_registration(uri, "e", name, key) is None

    killed = client.create_run(exp, tags={tracking.REGISTRATION_KEY: key})  # died after registering, before tagging
    half = client.create_model_version(name, source=(tmp_path / "art").as_uri(), run_id=killed.info.run_id)
    done = client.create_run(exp, tags={tracking.REGISTRATION_KEY: key})
    client.log_metric(done.info.run_id, "cv_f1_macro_mean", 0.7)
    full = client.create_model_version(name, source=(tmp_path / "art").as_uri(), run_id=done.info.run_id,
                                       tags={tracking.REGISTRATION_KEY: key, "task": "classification"})
    client.set_terminated(done.info.run_id, "FINISHED")

    retire_leftovers(uri, "e")  # what the register step does first, whatever its key
    found = tracking.find_registration(uri, "e", name, key)
    assert found["version"] == str(full.version) and found["run_id"] == done.info.run_id and found["reused"] is True
    assert found["cv_metrics"] == {"f1_macro": 0.7}
    assert [v.version for v in client.search_model_versions(f"name = '{name}'")] == [full.version]  # v{half} deleted
    assert client.get_run(killed.info.run_id).info.status == "FAILED"  # its process is gone (none recorded)

    tracking.check_version(uri, name, str(full.version), "classification")  # what promotion may touch: a complete registration
    with pytest.raises(LookupError, match=rf"m version {full.version} was registered for task 'classification'; this project's task is 'sft'"):
        tracking.check_version(uri, name, str(full.version), "sft")
    with pytest.raises(LookupError, match=rf"m: no version '9' in sqlite:///\S+; versions: {full.version}$"):
        tracking.check_version(uri, name, "9")
    bare = client.create_model_version(name, source=(tmp_path / "art").as_uri(), run_id=done.info.run_id)
    with pytest.raises(LookupError, match=rf"m version {bare.version} is not a complete tuneline registration"):
        tracking.check_version(uri, name, str(bare.version))
    assert tracking.find_registration(uri, "e", name, "other inputs") is None
    assert str(half.version) != found["version"]


def test_a_registration_killed_after_its_last_write_is_completed_and_a_live_one_is_left_alone(tmp_path):
    from mlflow import MlflowClient

    from tuneline.tracking import runs as tracking
    from tuneline.tracking.cleanup import gc, retire_leftovers
    from tuneline.tracking.owner import process_tags

    uri, name = f"sqlite:///{tmp_path / 'mlflow.db'}", "m"
    client = MlflowClient(uri)
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    client.create_registered_model(name)
    source = (tmp_path / "art").as_uri()
    # killed between tagging its version with the key and ending its run: nothing is missing
    ended_late = client.create_run(exp, tags={tracking.REGISTRATION_KEY: "k1"})
    kept = client.create_model_version(name, source=source, run_id=ended_late.info.run_id, tags={tracking.REGISTRATION_KEY: "k1"})
    # still registering, in this very process: neither a leftover nor touched
    live = client.create_run(exp, tags={tracking.REGISTRATION_KEY: "k2", **process_tags()})
    busy = client.create_model_version(name, source=source, run_id=live.info.run_id)

    listed = gc(uri, "e")
    assert ended_late.info.run_id in "\n".join(listed) and live.info.run_id not in "\n".join(listed)
    assert "  only the run's end is missing: it will be marked FINISHED, its version kept" in listed
    retire_leftovers(uri, "e")
    assert client.get_run(ended_late.info.run_id).info.status == "FINISHED"
    assert client.get_run(live.info.run_id).info.status == "RUNNING"
    assert sorted(v.version for v in client.search_model_versions(f"name = '{name}'")) == sorted([kept.version, busy.version])
    assert gc(uri, "e") == [f"nothing to clean in experiment 'e' of {uri}"]


def test_prefect_yaml_deploys_each_flow_on_its_pool():
    from prefect.flows import load_flow_from_entrypoint

    from tuneline.tasks.finetune import deployment_name

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert {n: d["work_pool"]["name"] for n, d in deployments.items()} == {"retrain": "default", "gpu": "gpu", "manual": "default",
                                                                           "rlhf": "default"}
    flows = {n: load_flow_from_entrypoint(str(REPO / d["entrypoint"])).name for n, d in deployments.items()}
    assert flows == {"retrain": "tuneline-pipeline", "gpu": "tuneline-finetune", "manual": "tuneline-promote", "rlhf": "tuneline-rlhf"}
    assert deployment_name("gpu") == f"{flows['gpu']}/gpu"  # what the pipeline calls for train.work_pool=gpu
    assert deployments["retrain"]["schedules"][0]["cron"] == "{{ cron.stdout }}"
    assert "AUTH" not in json.dumps(spec) and "PASSWORD" not in json.dumps(spec)



def test_an_output_rewritten_after_a_crash_leaves_no_temporary_copy_behind(tmp_path):
    from tuneline.storage import atomic_path

    (tmp_path / ".model.k1ll3d00").mkdir()  # what a SIGKILLed writer of models/model leaves
    (tmp_path / ".model.k1ll3d00" / "model").mkdir()
    (tmp_path / ".model.k1ll3d00" / "model" / "weights").write_bytes(b"x" * 1000)
    (tmp_path / ".modelx.keep").mkdir()  # another output's name: untouched
    with atomic_path(tmp_path / "model") as tmp:
        tmp.mkdir()
        (tmp / "weights").write_bytes(b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".modelx.keep", "model"]
    assert (tmp_path / "model" / "weights").read_bytes() == b"new"


def test_the_pipeline_flow_loads_without_torch_or_transformers():
    """A run that bad data stops at ingest or validate never pays for torch (a second or more of every
    `tuneline run`/`tuneline stage` process): the flow and its tasks import the engine only where they train."""
    import sys

    code = ("import sys, tuneline.flows.pipeline, tuneline.flows.finetune, tuneline.pipeline.shell\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'peft', 'trl', 'mlflow'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
