"""The whole Prefect flow on a small slice of the real default data, with a real MLflow store."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SMOKE_OVERRIDES, run_pipeline

pytestmark = pytest.mark.smoke


def resolve(entry) -> str:
    """A dvc.yaml deps/outs entry with its ${paths.*} templates filled from the default params."""
    from tuneline.config import Config

    text = next(iter(entry)) if isinstance(entry, dict) else entry
    for k, v in Config().paths.model_dump().items():
        text = text.replace("${paths.%s}" % k, v)
    return text


def dvc_stage_order() -> list[str]:
    """dvc.yaml's stages in a topological order of their deps/outs (file order breaks ties)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    produced = {resolve(o): name for name, s in stages.items() for o in s.get("outs", []) + s.get("metrics", [])}
    needs = {name: {produced[resolve(d)] for d in s.get("deps", []) if resolve(d) in produced} for name, s in stages.items()}
    order: list[str] = []
    while len(order) < len(stages):
        ready = [n for n in stages if n not in order and needs[n] <= set(order)]
        assert ready, f"dvc.yaml has a cycle among {set(stages) - set(order)}"
        order.append(ready[0])
    return order


@pytest.fixture(scope="module")
def smoke_run(prefect_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    return root, *run_pipeline(root, SMOKE_OVERRIDES)


def test_flow_registers_a_champion_with_fold_runs(smoke_run):
    from mlflow import MlflowClient

    from tuneline.engine import hardware

    root, results, _ = smoke_run
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    reg = results["register"]
    champion = client.get_model_version_by_alias("tuneline-classifier", "champion")
    assert str(champion.version) == reg["version"] == "1"
    assert results["promote"]["promote"] is True

    parent = client.get_run(reg["run_id"])
    for tag in ("git.commit", "git.dirty", "dvc.md5.raw", "dvc.md5.train", "dvc.md5.test", "tuneline.version"):
        assert parent.data.tags.get(tag), tag
    assert parent.data.params["cv.k"] == "2"
    exp = [parent.info.experiment_id]
    children = client.search_runs(exp, filter_string=f"tags.mlflow.parentRunId = '{reg['run_id']}'")
    fine_tuned = "all-MiniLM-L6-v2:" + ("full" if hardware.cuda() else "partial")  # what `auto` is here
    assert sorted(c.data.tags["candidate"] for c in children) == sorted(
        ["all-MiniLM-L6-v2:feature_extraction", fine_tuned, "tfidf-logreg"])
    for child in children:
        assert child.data.tags["tuneline.run_kind"] == "candidate"
        folds = client.search_runs(exp, filter_string=f"tags.mlflow.parentRunId = '{child.info.run_id}'")
        assert sorted(f.data.tags["fold"] for f in folds) == ["0", "1"]
        for fold in folds:
            assert {"accuracy", "loss", "precision_macro", "recall_macro", "f1_macro"} <= set(fold.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(reg["run_id"])}
    assert {"params.yaml", "report.json", "label_map.json", "confusion_matrix.png", "folds.json",
            "comparison.md", "comparison_table.json"} <= artifacts
    table = json.loads(open(client.download_artifacts(reg["run_id"], "comparison_table.json")).read())
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    winner = [r["candidate"] for r in rows if r["winner"]]
    best = max(rows, key=lambda r: r["f1_macro_mean"])  # the baseline may win too
    assert winner == [best["candidate"]] == [parent.data.tags["winner"]]

    test = results["refit"]
    assert test["test_accuracy"] > test["test_majority_rate"] + 0.05


def test_features_computed_once_per_dataset(smoke_run):
    root, results, _ = smoke_run
    # train texts encoded once for all k folds (features, and the frozen prefix of `partial`); the
    # refit reuses them, and encodes the test split once only when the frozen-feature head won
    rows = {r["strategy"]: r for r in json.loads((root / "data/cv/comparison.json").read_text())["rows"]}
    assert rows["feature_extraction"]["encoder_passes"] == 1
    winner = results["crossval"]["winner"]["strategy"]
    assert len(list((root / ".cache" / "features").glob("*.npy"))) == 1 + (winner == "feature_extraction")
    if "partial" in rows:
        assert rows["partial"]["encoder_passes"] == 1 and rows["partial"]["prefix_cache"] is True
        assert len(list((root / ".cache" / "features").glob("*.prefix.safetensors"))) == 1


def test_registered_model_predicts_like_the_test_evaluation(smoke_run, monkeypatch):
    import mlflow.pyfunc
    import pandas as pd

    root, results, _ = smoke_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/tuneline-classifier@champion")
    test = pd.read_parquet(root / "data" / "processed" / "test.parquet")
    pred = model.predict(test[["text"]])
    accuracy = float((pred["label"].to_numpy() == test["label"].to_numpy()).mean())
    assert accuracy == pytest.approx(results["refit"]["test_accuracy"], abs=1e-9)


def test_prefect_flow_runs_the_dvc_stages_in_dvc_order(smoke_run):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from tuneline.pipeline.stages import ORDER

    _, _, flow_run_id = smoke_run

    async def task_names() -> list[str]:
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        runs = sorted(runs, key=lambda r: r.start_time)
        return [r.name.rsplit("-", 1)[0] for r in runs]

    names = asyncio.run(task_names())
    assert names == dvc_stage_order() == list(ORDER)


def test_run_outputs_are_complete(smoke_run):
    root, results, _ = smoke_run
    from tuneline.config import Config
    from tuneline.pipeline.stages import ORDER, outputs

    for name in ORDER:
        for rel in outputs(name, Config().paths):
            assert (root / rel).exists(), rel
    model_dir = root / "models" / "model"
    assert json.loads((model_dir / "tuneline.json").read_text())["labels"] == ["negative", "neutral", "positive"]
    weights = {"feature_extraction": "encoder/model.safetensors", "baseline": "tfidf_logreg.safetensors"}
    assert (model_dir / weights.get(results["crossval"]["winner"]["strategy"], "model.safetensors")).is_file()
    assert not list(model_dir.rglob("*.bin"))


def test_the_auto_champion_is_a_fine_tuned_encoder(tmp_path):
    """The refit model's encoder differs from the pre-trained one where `auto` trains it, and only
    there; the folder is the whole plain Hugging Face model. The steps up to the refit, without the
    flow: registering and promoting the folder is smoke_run's to check."""
    import torch
    from safetensors.torch import load_file

    from tuneline.engine import hardware
    from tuneline.config import DEFAULT_MODEL, load_config
    from tuneline.engine.models import resolve_model
    from tuneline.pipeline.shell import run_stage

    root = tmp_path
    config = load_config(None, SMOKE_OVERRIDES + ["select.strategies=[auto]", "select.baseline=false"])
    results = {name: run_stage(name, config, root)
               for name in ("ingest", "validate", "preprocess", "select", "crossval", "refit")}
    strategy = results["crossval"]["winner"]["strategy"]
    assert strategy == ("full" if hardware.cuda() else "partial")
    tuned = load_file(str(root / "models" / "model" / "model.safetensors"))
    original = load_file(str(Path(resolve_model(DEFAULT_MODEL)) / "model.safetensors"))
    changed, same = [], []
    for name, weight in original.items():
        key = next((k for k in (f"bert.{name}", name) if k in tuned), None)
        if key is None or not name.startswith(("encoder.layer.", "embeddings.")):
            continue
        (same if torch.equal(tuned[key].float(), weight.float()) else changed).append(name)
    layers = {int(n.split(".")[2]) for n in changed if n.startswith("encoder.layer.")}
    if strategy == "partial":  # the bottom 4 of 6 layers and the embeddings stay as pre-trained
        assert layers == {4, 5} and not any(n.startswith(("embeddings.", "encoder.layer.0.")) for n in changed)
    else:
        assert layers == set(range(6))
    assert results["refit"]["test_accuracy"] > results["refit"]["test_majority_rate"]
