"""Hyperparameter search inside the cross-validation (tuneline.pipeline.tune): the search space, the
study's key, trial 0, the seeds and the resume rules on a small task plugin with a known optimum;
then on real data (frozen-feature candidate, k=2): identical folds, pruning, the registry, a
SIGKILLed run resumed, and sequential / thread / Dask trials giving the same scores."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import FEATURES_OVERRIDES, venv_env
from tuneline.config import ConfigError, load_config
from tuneline.pipeline import tune
from tuneline.plugins import TaskPlugin

CANDIDATE = "all-MiniLM-L6-v2:feature_extraction"


# --- a task with a known optimum: the score of a fold is -(x - 0.3)^2 - fold/10, lower loss better ---
class Quadratic(TaskPlugin):
    """Minimises `loss`, so the search must follow the plugin's direction, not classification's."""

    name, package = "quadratic-test", "tests"

    def __init__(self, values=None):
        self.calls: list[tuple] = []
        self.values = values or {"x": 0.9, "kind": "a"}

    def metric(self, config):
        return "loss", False

    def cv_plan(self, config, files):
        return {"folds": [0, 1, 2], "jobs": [{"fold": i, "params": None} for i in range(3)]}

    def run_fold(self, config, files, plan, job):
        self.calls.append((job["fold"], tuple(sorted(job["params"].items()))))
        x = job["params"]["x"] + (0.05 if job["params"]["kind"] == "b" else 0.0)
        return {"fold": job["fold"], "metrics": {"loss": (x - 0.3) ** 2 + job["fold"] / 10}}

    def tune_targets(self, config, files, plan):
        space = {"x": {"type": "float", "low": 0.0, "high": 1.0, "log": False},
                 "kind": {"type": "categorical", "choices": ["a", "b"]}}
        return [{"name": "toy", "space": space, "values": self.values, "jobs": [0, 1, 2], "key": {"data": "d1"}}]

    def trial_jobs(self, config, plan, target, params):
        return [{**plan["jobs"][i], "params": params} for i in target["jobs"]]

    def tuned_overrides(self, config, params):
        return {f"toy.{k}": v for k, v in params.items()}


class _Files:
    def __init__(self, root):
        self.root = Path(root)


def _search(tmp_path, plugin, *overrides):
    config = load_config(None, ["tune.enabled=true", f"tune.storage=sqlite:///{tmp_path / 'study.db'}", *overrides])
    plan = plugin.cv_plan(config, None)
    return tune.search(plugin, config, _Files(tmp_path), plan, lambda run, jobs: [run(j) for j in jobs])["toy"]


@pytest.mark.unit
def test_default_space_is_per_strategy_and_a_bad_range_names_its_key():
    space = load_config(None).tune.space
    assert space["partial"]["learning_rate"] == {"type": "float", "low": 1e-5, "high": 5e-4, "log": True}
    assert space["lora"]["learning_rate"]["log"] and space["lora"]["learning_rate"]["high"] > space["full"]["learning_rate"]["high"]
    assert space["partial"]["epochs"]["type"] == "int" and space["feature_extraction"]["head_c"]["log"]
    assert {"lora_r", "lora_alpha", "lora_target_modules"} <= set(space["lora"]) and "freeze_layers" in space["partial"]
    assert not load_config(None).tune.enabled  # off in the quickstart
    with pytest.raises(ConfigError, match=r"tune\.space.*partial\.learning_rate.*log scale needs low > 0"):
        load_config(None, ["tune.space.partial.learning_rate={low: 0, high: 0.1, log: true}"])
    with pytest.raises(ConfigError, match=r"tune\.pruner.*'median'"):
        load_config(None, ["tune.pruner=hyperband"])


@pytest.mark.unit
def test_the_study_is_keyed_by_space_data_candidate_and_metric():
    target = {"name": "m:partial", "key": {"data": "d1", "folds": "f1"}}
    space = {"x": {"type": "float", "low": 0.0, "high": 1.0, "log": False}}
    base = tune.study_name(target, space, "f1_macro", True)
    assert base.startswith("m_partial-") and base == tune.study_name(dict(target), dict(space), "f1_macro", True)
    others = [tune.study_name({**target, "key": {"data": "d2", "folds": "f1"}}, space, "f1_macro", True),
              tune.study_name({**target, "name": "m:full"}, space, "f1_macro", True),
              tune.study_name(target, {"x": {**space["x"], "high": 2.0}}, "f1_macro", True),
              tune.study_name(target, space, "accuracy", True)]
    assert len({base, *others}) == 5


@pytest.mark.unit
def test_trial0_is_the_configured_values_seeds_follow_the_trial_number_and_the_direction_is_the_plugins(tmp_path):
    plugin = Quadratic()
    out = _search(tmp_path, plugin, "tune.n_trials=8", "tune.startup_trials=3", "tune.pruner=none", "tune.seed=7")
    trials = out["trials"]
    assert trials[0]["configured"] and trials[0]["params"] == {"x": 0.9, "kind": "a"}
    assert out["configured_value"] == pytest.approx(0.36 + 0.1)  # mean over folds of (0.9-0.3)^2 + fold/10
    assert [t["seed"] for t in trials] == [tune.trial_seed(7, n) for n in range(8)]
    assert out["best_value"] <= out["configured_value"] and not out["higher_is_better"]  # minimised
    assert out["best_value"] == min(t["value"] for t in trials)
    assert out["overrides"] == {f"toy.{k}": v for k, v in out["params"].items()}
    # the same seed and history draw the same trials; a finished study trains nothing again
    again = Quadratic()
    assert _search(tmp_path / "other", again, "tune.n_trials=8", "tune.startup_trials=3", "tune.pruner=none",
                   "tune.seed=7")["trials"] == [{**t} for t in trials]
    plugin.calls.clear()
    assert _search(tmp_path, plugin, "tune.n_trials=8", "tune.startup_trials=3", "tune.pruner=none", "tune.seed=7")["best_value"] \
        == out["best_value"]
    assert plugin.calls == []


class Seeded(Quadratic):
    """Jobs carry a training seed, and the loss moves a little with it (seed noise)."""

    def cv_plan(self, config, files):
        return {"folds": [0, 1, 2], "jobs": [{"fold": i, "seed": 42 + i, "params": None} for i in range(3)]}

    def run_fold(self, config, files, plan, job):
        out = super().run_fold(config, files, plan, job)
        self.calls[-1] += (job["seed"],)
        return {**out, "metrics": {"loss": out["metrics"]["loss"] + (job["seed"] % 7) / 100}}


@pytest.mark.unit
def test_the_best_trial_is_rerun_with_other_training_seeds_and_its_spread_reported(tmp_path):
    plugin = Seeded()
    out = _search(tmp_path, plugin, "tune.n_trials=4", "tune.startup_trials=2", "tune.pruner=none", "tune.seed_repeats=2")
    spread = out["seed_spread"]
    assert spread["seed_offsets"] == [0, tune.SEED_STEP, 2 * tune.SEED_STEP] and spread["cv_means"][0] == out["best_value"]
    best = tuple(sorted(out["params"].items()))
    reruns = [call for call in plugin.calls if call[2] >= 42 + tune.SEED_STEP]
    assert sorted(c[2] for c in reruns) == sorted(42 + i + tune.SEED_STEP * r for r in (1, 2) for i in range(3))
    assert all(c[1] == best for c in reruns)  # the winner's values, the same folds, other seeds
    assert len(set(spread["cv_means"])) == 3 and spread["std"] > 0  # seed noise shows up
    off = _search(tmp_path / "off", Seeded(), "tune.n_trials=2", "tune.pruner=none", "tune.seed_repeats=0")
    assert off["seed_spread"] is None
    assert _search(tmp_path / "noseed", Quadratic(), "tune.n_trials=2", "tune.pruner=none")["seed_spread"] is None


@pytest.mark.unit
def test_pruning_reports_after_each_fold_and_never_prunes_trial0(tmp_path):
    out = _search(tmp_path, Quadratic({"x": 0.99, "kind": "b"}), "tune.n_trials=10", "tune.startup_trials=2",
                  "tune.pruner=median")
    pruned = [t for t in out["trials"] if t["state"] == "pruned"]
    assert pruned and all(len(t["intermediate"]) < 3 for t in pruned)
    assert out["trials"][0]["state"] == "complete" and len(out["trials"][0]["intermediate"]) == 3


@pytest.mark.unit
def test_a_timeout_stops_new_trials_and_parallel_trials_stay_within_the_cores(tmp_path):
    out = _search(tmp_path, Quadratic(), "tune.n_trials=50", "tune.timeout_s=0.001", "tune.pruner=none")
    assert len(out["trials"]) == 1 and out["trials"][0]["configured"]  # the first batch runs, then the clock says stop
    cores = os.cpu_count() or 1
    assert tune.trial_workers(load_config(None, ["tune.parallel=64", "cv.parallel=1"])) == min(64, cores)
    assert tune.trial_workers(load_config(None, [f"tune.parallel={cores}", f"cv.parallel={cores}"])) == 1
    dask = ["tune.parallel=64", "tune.task_runner=dask", "cv.dask_address=tcp://127.0.0.1:1"]
    assert tune.trial_workers(load_config(None, dask)) == 64  # a cluster's workers are its own to size


@pytest.mark.unit
def test_a_trial_left_running_by_a_dead_process_is_enqueued_again_with_its_parameters(tmp_path):
    import optuna

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    study = tune.open_study(f"sqlite:///{tmp_path / 's.db'}", "s", True, load_config(None).tune)
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    trial.set_user_attr("owner", f"{__import__('socket').gethostname()}:{dead.pid}")
    alive = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    alive.set_user_attr("owner", f"{__import__('socket').gethostname()}:{os.getpid()}")
    assert tune.requeue_killed(study) == [trial.number]
    states = {t.number: t.state.name for t in study.get_trials()}
    assert states[trial.number] == "FAIL" and states[alive.number] == "RUNNING"
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [w.user_attrs["retry_of"] for w in waiting] == [trial.number]
    assert waiting[0].system_attrs["fixed_params"] == trial.params


@pytest.mark.unit
def test_apply_writes_the_values_into_params_and_turns_the_search_off(tmp_path):
    from conftest import REPO

    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    tune.apply_to_params(params, {"train.learning_rate": 0.00012, "train.lora_target_modules": ["query", "value"]})
    config = load_config(params)
    assert config.train.learning_rate == 0.00012 and config.train.lora_target_modules == ["query", "value"]
    assert not config.tune.enabled and params.read_text().startswith("# tuneline parameters")


# --- real data: one frozen-feature candidate, 480 training rows, k=2 -------------------------------
@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from tuneline.pipeline.shell import run_stage

    root = tmp_path_factory.mktemp("tune")
    config = load_config(None, FEATURES_OVERRIDES)
    for name in ("ingest", "validate", "preprocess", "select"):
        run_stage(name, config, root)
    return root


def _copy(prepared: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(prepared, dest, ignore=shutil.ignore_patterns("tune", "mlflow.db"))
    return dest


TUNE = FEATURES_OVERRIDES + ["tune.enabled=true", "tune.startup_trials=2"]


@pytest.mark.smoke
def test_a_tuned_run_scores_every_trial_on_the_same_folds_prunes_and_registers_the_winner(prepared, tmp_path):
    from mlflow import MlflowClient

    from tuneline.cli import main
    from tuneline.pipeline.shell import run_stage

    root = _copy(prepared, tmp_path / "p")
    config = load_config(None, TUNE + ["tune.n_trials=6"])
    summary = run_stage("crossval", config, root)
    trials = json.loads((root / "data/cv/tune" / CANDIDATE.replace(":", "_") / "trials.json").read_text())
    folds = json.loads((root / "data/cv/folds.json").read_text())["folds"]
    assert len(trials) == 6 and trials[0]["configured"] and trials[0]["params"] == {"head_c": 1.0}
    for t in trials:  # identical folds, identical fold order, for every trial
        assert [(r["fold"], r["rows"], r["train_rows"]) for r in t["folds"]] == \
            [(i, len(f["val"]), len(f["train"])) for i, f in enumerate(folds)][:len(t["folds"])]
    pruned = [t for t in trials if t["state"] == "pruned"]
    assert pruned and all(len(t["folds"]) == 1 for t in pruned)
    outcome = json.loads((root / "data/cv/tune.json").read_text())[CANDIDATE]
    assert outcome["best_value"] >= outcome["configured_value"]
    assert summary["winner"]["train"] == {"head_c": outcome["params"]["head_c"]}
    assert summary["metrics"]["f1_macro"]["mean"] == pytest.approx(outcome["best_value"])
    assert {"optimization_history.png", "parallel_coordinate.png"} <= {p.name for p in (root / "data/cv/tune").rglob("*.png")}

    from tuneline.classification.crossval import candidate_config

    winner = json.loads((root / "data/cv/summary.json").read_text())["winner"]
    assert candidate_config(winner, config.train).head_c == outcome["params"]["head_c"]  # what refit trains with
    run_stage("refit", config, root)
    reg = run_stage("register", config, root)
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    version = client.get_model_version(reg["registered_model_name"], reg["version"])
    assert float(version.tags["tune.train.head_c"]) == pytest.approx(outcome["params"]["head_c"])
    assert version.tags["tune.best_trial"] == str(outcome["best_trial"])
    runs = client.search_runs([reg["experiment_id"]])
    by_id = {r.info.run_id: r for r in runs}
    kind = lambda r: r.data.tags.get("tuneline.run_kind")  # noqa: E731
    trial_runs = [r for r in runs if kind(r) == "trial"]
    assert len(trial_runs) == 6 and all(kind(by_id[r.data.tags["mlflow.parentRunId"]]) == "candidate" for r in trial_runs)
    trial_folds = [r for r in runs if kind(r) == "fold" and kind(by_id[r.data.tags["mlflow.parentRunId"]]) == "trial"]
    assert len(trial_folds) == sum(len(t["folds"]) for t in trials)
    candidate_run = by_id[trial_runs[0].data.tags["mlflow.parentRunId"]]
    assert {a.path for a in client.list_artifacts(candidate_run.info.run_id, "tune")} >= {"tune/optimization_history.png"}

    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(load_config(None, TUNE).to_dict(), sort_keys=False))
    cwd = os.getcwd()
    try:
        os.chdir(root)
        assert main(["tune", "--apply"]) == 0
    finally:
        os.chdir(cwd)
    pinned = load_config(params)
    assert pinned.train.head_c == pytest.approx(outcome["params"]["head_c"]) and not pinned.tune.enabled


@pytest.mark.smoke
def test_a_killed_search_resumes_without_retraining_finished_trials(prepared, tmp_path):
    """A real `tuneline stage crossval` SIGKILLed in the middle of trial 2; the rerun keeps trials 0-1,
    re-enqueues trial 2's parameters and ends with the uninterrupted run's best."""
    enqueue = "tune.enqueue=[{head_c: 0.05}, {head_c: 3.0}, {head_c: 0.5}]"
    sets = TUNE + ["tune.n_trials=4", "tune.pruner=none", enqueue]
    killed_root, clean_root = _copy(prepared, tmp_path / "killed"), _copy(prepared, tmp_path / "clean")
    args = ["tuneline", "stage", "crossval"] + [x for s in sets for x in ("--set", s)]
    env = venv_env() | {"TUNELINE_FAULT": "tune-trial2-fold1"}
    killed = subprocess.run(args, cwd=killed_root, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    study = _trials(killed_root)
    assert [t.state.name for t in study[:3]] == ["COMPLETE", "COMPLETE", "RUNNING"]
    first_owner = study[0].user_attrs["owner"]
    rerun = subprocess.run(args, cwd=killed_root, env=venv_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    after = _trials(killed_root)
    assert [t.user_attrs["owner"] for t in after[:2]] == [first_owner] * 2  # not trained again
    assert after[2].state.name == "FAIL" and after[4].user_attrs["retry_of"] == 2 and after[4].params == after[2].params
    assert sum(t.state.name == "COMPLETE" for t in after) == 4  # the budget reached

    from tuneline.pipeline.shell import run_stage

    run_stage("crossval", load_config(None, sets), clean_root)
    killed_out, clean_out = (json.loads((r / "data/cv/tune.json").read_text())[CANDIDATE] for r in (killed_root, clean_root))
    assert (killed_out["params"], killed_out["best_value"]) == (clean_out["params"], clean_out["best_value"])


def _trials(root: Path):
    import optuna

    db = f"sqlite:///{root / tune.STUDY_DB}"
    (summary,) = optuna.get_all_study_summaries(db)
    return optuna.load_study(study_name=summary.study_name, storage=db).get_trials()


@pytest.mark.smoke
def test_sequential_threads_and_dask_trials_give_the_same_scores(prepared, tmp_path, prefect_server):
    from distributed import LocalCluster
    from prefect import flow

    from tuneline.pipeline.shell import run_stage
    from tuneline.tasks.crossval import crossval_task

    root = _copy(prepared, tmp_path / "p")
    sets = TUNE + ["tune.n_trials=4", "tune.pruner=none", "tune.enqueue=[{head_c: 0.05}, {head_c: 3.0}, {head_c: 0.5}]"]

    @flow
    def cv_only(config, root: str):
        return crossval_task(config, root)

    def scores(mode: str) -> dict:
        trials = json.loads((root / "data/cv/tune" / CANDIDATE.replace(":", "_") / "trials.json").read_text())
        assert len(trials) == 4, mode
        return {t["params"]["head_c"]: [r["metrics"] for r in t["folds"]] for t in trials}

    run_stage("crossval", load_config(None, sets + [f"tune.storage=sqlite:///{tmp_path / 'seq.db'}"]), root)
    results = {"sequential": scores("sequential")}
    cv_only(load_config(None, sets + ["tune.parallel=2", f"tune.storage=sqlite:///{tmp_path / 'thr.db'}"]), str(root))
    results["threads"] = scores("threads")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        cv_only(load_config(None, sets + ["tune.parallel=2", "tune.task_runner=dask", f"cv.dask_address={cluster.scheduler_address}",
                                          f"tune.storage=sqlite:///{tmp_path / 'dask.db'}"]), str(root))
    results["dask"] = scores("dask")
    assert results["threads"] == results["sequential"] and results["dask"] == results["sequential"]

    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    async def trial_runs():
        async with get_client() as client:
            runs = await client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="trial")))
        return [r for r in runs if r.state.is_completed()]

    assert len(asyncio.run(trial_runs())) >= 8  # every trial a Prefect task: 4 on threads, 4 on Dask
    assert sorted(results["sequential"]) == [0.05, 0.5, 1.0, 3.0]


@pytest.mark.integration
def test_in_team_mode_the_study_lives_in_the_teams_postgresql(tmp_path, monkeypatch):
    """TUNELINE_OPTUNA_STORAGE names the team's PostgreSQL: two runs, as from two machines, share one study."""
    import optuna
    from services import require_postgres

    require_postgres()
    from team_servers import PG, create_database, drop_database

    database = create_database("tune")
    try:
        url = f"{PG.replace('postgresql://', 'postgresql+psycopg://')}/{database}"
        monkeypatch.setenv(tune.ENV_STORAGE, url)
        config = load_config(None, ["tune.enabled=true", "tune.n_trials=5", "tune.pruner=none"])
        first = Quadratic()
        out = tune.search(first, config, _Files(tmp_path / "a"), first.cv_plan(config, None), lambda run, jobs: [run(j) for j in jobs])
        assert out["toy"]["storage"].startswith("postgresql+psycopg://") and not (tmp_path / "a" / tune.STUDY_DB).exists()
        (summary,) = optuna.get_all_study_summaries(url)
        assert summary.study_name == out["toy"]["study"] and summary.n_trials == 5
        bigger = load_config(None, ["tune.enabled=true", "tune.n_trials=7", "tune.pruner=none"])
        second = Quadratic()
        again = tune.search(second, bigger, _Files(tmp_path / "b"), second.cv_plan(bigger, None), lambda run, jobs: [run(j) for j in jobs])
        assert len(again["toy"]["trials"]) == 7 and len(second.calls) == 2 * 3  # only the two new trials ran
    finally:
        tune._storages.pop(url, None)
        drop_database(database)
