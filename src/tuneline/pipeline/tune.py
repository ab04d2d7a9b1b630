"""Hyperparameter search inside the cross-validation, one Optuna study per tuned candidate: what it does
and why is README's "Hyperparameter search inside k-fold (Optuna)". The study's name hashes the space, the
data, the candidate and the metric (a stale study is never appended to); a rerun after a kill keeps the
finished trials (their folds are stored on the trial) and re-enqueues the killed one. The task's side comes
from its plugin (TaskPlugin.tune_targets & co). `map_trials(run, handles)` is tasks/crossval.py's task runner.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import os
import socket
import statistics
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

from tuneline.pipeline import handoff
from tuneline.pipeline.stages import FoldRun
from tuneline.storage import slug
from tuneline.tracking.runs import fault, redact

log = logging.getLogger(__name__)

STUDY_DB = ".cache/tune/optuna.db"
ENV_STORAGE = "TUNELINE_OPTUNA_STORAGE"
CONFIGURED = "configured"  # user attr of trial 0
SEED_STEP = 1000  # the winner's extra seeds: far from the cv.seed + fold seeds of the trials
PLOTS = {"optimization_history.png": "plot_optimization_history", "param_importances.png": "plot_param_importances",
         "parallel_coordinate.png": "plot_parallel_coordinate"}

_storages: dict[str, Any] = {}
_storage_lock = threading.Lock()


def storage_url(config, root: Path | str) -> str:
    """tune.storage, else TUNELINE_OPTUNA_STORAGE (a team's PostgreSQL), else SQLite in the project."""
    return config.tune.storage or os.environ.get(ENV_STORAGE) or f"sqlite:///{(Path(root) / STUDY_DB).resolve()}"


def storage(url: str):
    """One RDBStorage per URL and process (thread-safe; trials on threads share it)."""
    import optuna

    with _storage_lock:
        if url not in _storages:
            if url.startswith("sqlite:///"):
                Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
            # SQLite: wait for a lock rather than fail when parallel trials report at once
            kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
            _storages[url] = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        return _storages[url]


def trial_seed(seed: int, number: int) -> int:
    """The sampler's seed for trial `number`: a pure function of (tune.seed, number)."""
    return int.from_bytes(hashlib.sha256(f"tuneline-trial:{seed}:{number}".encode()).digest()[:4], "big")


def with_configured(space: dict, values: dict) -> dict:
    """The space with each configured categorical value among the choices, so that trial 0 can be
    the configured values exactly (a range keeps its bounds: Optuna accepts an enqueued value outside)."""
    return {name: {**spec, "choices": [*spec["choices"], values[name]]}
            if spec["type"] == "categorical" and values.get(name) not in spec["choices"] else spec for name, spec in space.items()}


def suggest(trial, name: str, spec: dict):
    if spec["type"] == "categorical":
        return trial.suggest_categorical(name, spec["choices"])
    return (trial.suggest_int if spec["type"] == "int" else trial.suggest_float)(name, spec["low"], spec["high"], log=spec["log"])


def study_name(target: dict, space: dict, metric: str, higher: bool) -> str:
    """`<candidate>-<hash of space, data key, candidate, metric and direction>`."""
    payload = {"candidate": target["name"], "space": space, "key": target["key"], "metric": metric, "higher": higher}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{slug(target['name'])}-{digest}"


def make_pruner(tune_cfg):
    import optuna

    return {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=tune_cfg.startup_trials, n_warmup_steps=0),
            "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
            }.get(tune_cfg.pruner, optuna.pruners.NopPruner)()


def open_study(url: str, name: str, higher: bool, tune_cfg):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=storage(url), study_name=name, direction="maximize" if higher else "minimize",
                               load_if_exists=True, pruner=make_pruner(tune_cfg),
                               sampler=optuna.samplers.TPESampler(seed=tune_cfg.seed, n_startup_trials=tune_cfg.startup_trials))


def _dead(owner: Optional[str]) -> bool:
    """A trial started by a process of this host that is gone (a killed run)."""
    import psutil

    host, _, pid = (owner or "").rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not psutil.pid_exists(int(pid))


def _retry(study, number: int, params: dict, configured: bool) -> None:
    """Fail trial `number` and enqueue its parameters again: the next run retries it."""
    from optuna.trial import TrialState

    study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    study.enqueue_trial(params, user_attrs={"retry_of": number} | ({CONFIGURED: True} if configured else {}))


def requeue_killed(study) -> list[int]:
    """Fail the trials a killed run left RUNNING and enqueue each again with its parameters."""
    from optuna.trial import TrialState

    killed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if _dead(t.user_attrs.get("owner"))]
    for t in killed:
        _retry(study, t.number, t.params, bool(t.user_attrs.get(CONFIGURED)))
    if killed:
        log.warning("study %s: trial(s) %s were killed mid-run; enqueued again with their parameters", study.study_name,
                    [t.number for t in killed])
    return [t.number for t in killed]


@dataclass
class TrialRun:
    """One trial's work, small and picklable: it may run on a thread or a Dask worker."""

    url: str
    study: str
    trial_id: int
    number: int
    params: dict
    configured: bool
    tune_cfg: Any
    jobs: list[dict]
    chunk: int  # folds run at once (cv.parallel) between two reports to the pruner


def run_trial(run_fold: Callable[[dict], dict], map_jobs, score: Callable[[dict], float], handle: TrialRun) -> dict:
    """Run one trial's folds chunk by chunk, reporting the running CV mean after each to the study.
    Returns {"state": complete|pruned, "value", "results"}; telling the study is the caller's."""
    import optuna

    study = optuna.load_study(study_name=handle.study, storage=storage(handle.url), pruner=make_pruner(handle.tune_cfg))
    trial = optuna.trial.Trial(study, handle.trial_id)
    results: list[dict] = []
    for start in range(0, len(handle.jobs), handle.chunk):
        results += map_jobs(run_fold, handle.jobs[start:start + handle.chunk])
        value = statistics.fmean(score(r) for r in results)
        trial.report(value, step=len(results))
        trial.set_user_attr("folds", results)  # the best trial's folds become the candidate's CV results
        fault(f"tune-trial{handle.number}-fold{len(results)}")
        if not handle.configured and len(results) < len(handle.jobs) and trial.should_prune():
            log.info("trial %d pruned after %d fold(s): running mean %.4f", handle.number, len(results), value)
            return {"state": "pruned", "value": value, "results": results}
    return {"state": "complete", "value": statistics.fmean(score(r) for r in results), "results": results}


def trial_workers(config) -> int:
    """Trials at once. The rule: tune.parallel x cv.parallel fold jobs run at once, and on threads that
    product must not pass this machine's cores; above it tune.parallel is lowered (a Dask cluster's
    workers are its own to size)."""
    wanted, cores = config.tune.parallel, os.cpu_count() or 1
    allowed = wanted if config.tune.task_runner == "dask" else max(1, cores // config.cv.parallel)
    if wanted > allowed:
        log.warning("tune.parallel=%d x cv.parallel=%d > %d cores: running %d trial(s) at once", wanted, config.cv.parallel,
                    cores, allowed)
    return min(wanted, allowed)


class Search:
    """The study of one target: ask, run (through map_trials), tell, until the budget is spent."""

    def __init__(self, plugin, config, files, plan: dict, target: dict, map_jobs):
        self.plugin, self.config, self.files, self.plan, self.target = plugin, config, files, plan, target
        self.map_jobs, self.cfg = map_jobs, config.tune
        self.fold_run, self.score = FoldRun(plugin, config, files, plan), partial(plugin.fold_score, config)
        self.metric, self.higher = plugin.metric(config)
        self.space = with_configured(target["space"], target["values"])
        self.url = storage_url(config, files.root)
        self.name = study_name(target, self.space, self.metric, self.higher)

    def run(self, map_trials=None) -> dict:
        from optuna.trial import TrialState

        study = open_study(self.url, self.name, self.higher, self.cfg)
        if not study.get_trials(deepcopy=False):
            study.enqueue_trial(self.target["values"], user_attrs={CONFIGURED: True})
            for params in self.cfg.enqueue:
                study.enqueue_trial({k: v for k, v in params.items() if k in self.space})
        requeue_killed(study)
        done = lambda: len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))  # noqa: E731
        log.info("tuning %s: study %s (%s), %d of %d trials finished", self.target["name"], self.name, redact(self.url),
                 done(), self.cfg.n_trials)
        workers, deadline = trial_workers(self.config), time.monotonic() + (self.cfg.timeout_s or float("inf"))
        # in a hand-off job a Dask worker pulls the trial's inputs from the remote
        fold_run = handoff.on_dask(self.fold_run) if self.cfg.task_runner == "dask" else self.fold_run
        run = partial(run_trial, fold_run, self.map_jobs, self.score)
        while time.monotonic() < deadline and (left := self.cfg.n_trials - done()) > 0:
            handles = [self._ask(study) for _ in range(min(workers, left))]
            try:
                outcomes = list((map_trials or map)(run, handles))  # one after another without a task runner
            except BaseException:
                for h in handles:
                    _retry(study, h.number, h.params, h.configured)
                raise
            for h, outcome in zip(handles, outcomes):
                state = TrialState.PRUNED if outcome["state"] == "pruned" else TrialState.COMPLETE
                study.tell(h.number, outcome["value"] if state == TrialState.COMPLETE else None, state=state)
                log.info("trial %d %s: %s %.4f %s", h.number, outcome["state"], self.metric, outcome["value"], h.params)
        best = self.outcome(study)
        return best | {"seed_spread": self.seed_spread(best)}

    def seed_spread(self, best: dict) -> Optional[dict]:
        """The best trial re-run on the same folds with tune.seed_repeats other training seeds (job seed +
        SEED_STEP x r): how much of its lead the search may owe to luck. None when off, or seedless jobs."""
        jobs = self.plugin.trial_jobs(self.config, self.plan, self.target, best["params"])
        if not self.cfg.seed_repeats or not all("seed" in j for j in jobs):
            return None
        offsets, means = [SEED_STEP * r for r in range(self.cfg.seed_repeats + 1)], [best["best_value"]]
        for offset in offsets[1:]:
            results = self.map_jobs(self.fold_run, [{**j, "seed": j["seed"] + offset} for j in jobs])
            means.append(statistics.fmean(self.score(x) for x in results))
        spread = {"seed_offsets": offsets, "cv_means": means, "mean": statistics.fmean(means), "std": statistics.stdev(means)}
        log.info("%s, best trial %d over %d training seeds: %s %.4f ± %.4f (%s)", self.target["name"], best["best_trial"],
                 len(means), self.metric, spread["mean"], spread["std"], ", ".join(f"{m:.4f}" for m in means))
        return spread

    def _ask(self, study) -> TrialRun:
        import optuna

        trial = study.ask()  # an enqueued trial first, with its number; then a fresh one
        seed = trial_seed(self.cfg.seed, trial.number)
        study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.cfg.startup_trials)
        params = {name: suggest(trial, name, spec) for name, spec in self.space.items()}
        trial.set_user_attr("owner", f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr("seed", seed)
        return TrialRun(self.url, self.name, trial._trial_id, trial.number, params, bool(trial.user_attrs.get(CONFIGURED)),
                        self.cfg, self.plugin.trial_jobs(self.config, self.plan, self.target, params), self.config.cv.parallel)

    def outcome(self, study) -> dict:
        trials = [{"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
                   "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
                   "seed": t.user_attrs.get("seed"), "configured": bool(t.user_attrs.get(CONFIGURED)),
                   "retry_of": t.user_attrs.get("retry_of"), "folds": t.user_attrs.get("folds", [])}
                  for t in study.get_trials(deepcopy=False)]
        if not (complete := [t for t in trials if t["state"] == "complete"]):
            raise RuntimeError(f"study {self.name}: no complete trial (tune.n_trials={self.cfg.n_trials})")
        best = (max if self.higher else min)(complete, key=lambda t: t["value"])
        configured = next((t for t in complete if t["configured"]), None)
        params = dict(best["params"])
        return {"candidate": self.target["name"], "study": self.name, "storage": redact(self.url), "metric": self.metric,
                "higher_is_better": self.higher, "best_trial": best["number"], "best_value": best["value"],
                "configured_value": None if configured is None else configured["value"], "params": params,
                "overrides": self.plugin.tuned_overrides(self.config, params), "results": best["folds"],
                "n_complete": len(complete), "n_pruned": sum(t["state"] == "pruned" for t in trials),
                "n_failed": sum(t["state"] == "fail" for t in trials), "trials": trials, "jobs": self.target["jobs"],
                "plots": plots(study)}


def plots(study) -> dict[str, bytes]:
    """Optimisation history, parameter importances and parallel coordinates as PNGs; a plot the study
    can't draw yet (importances need two complete trials that differ) is left out."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as views

    out = {}
    for file, name in PLOTS.items():
        try:
            with warnings.catch_warnings(action="ignore"):
                ax = getattr(views, name)(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.set_size_inches(9, 5)
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
            plt.close(fig)
            out[file] = buf.getvalue()
        except Exception as exc:  # too few trials, a constant parameter: say which and go on
            log.info("study %s: no %s (%s: %s)", study.study_name, file, type(exc).__name__, exc)
    return out


def search(plugin, config, files, plan: dict, map_jobs, map_trials=None) -> dict[str, dict]:
    """{candidate: outcome} for every target the task offers in this plan."""
    if not (targets := plugin.tune_targets(config, files, plan)):
        log.warning("tune.enabled, but task %r offers nothing to tune in this plan (tune.candidates=%s): no search",
                    config.task, config.tune.candidates)
    return {t["name"]: Search(plugin, config, files, plan, t, map_jobs).run(map_trials) for t in targets}


def cv_files(outcomes: dict[str, dict]) -> dict[str, Any]:
    """The cv folder's tune files: tune.json (one entry per candidate) and tune/<candidate>/ (trials, plots)."""
    out: dict[str, Any] = {}
    for name, o in outcomes.items():
        out |= {f"tune/{slug(name)}/{file}": data for file, data in {"trials.json": o["trials"], **o["plots"]}.items()}
    return out | {"tune.json": {name: {k: v for k, v in o.items() if k not in ("trials", "results", "plots", "jobs")}
                                for name, o in outcomes.items()}}


def apply_to_params(params_path: Path, overrides: dict[str, Any]) -> None:
    """Write {dotted key: value} into a params file and turn the search off (DVC users pin, then stop
    searching); the file's leading comment is kept."""
    import yaml

    from tuneline.config import load_config

    text = params_path.read_text(encoding="utf-8") if params_path.is_file() else ""
    header = "".join(line + "\n" for line in itertools.takewhile(lambda line: line.startswith("#"), text.splitlines()))
    raw = yaml.safe_load(text) or {}
    for key, value in {**overrides, "tune.enabled": False}.items():
        node = raw
        *sections, last = key.split(".")
        for part in sections:
            node = node.setdefault(part, {})
        node[last] = value
    params_path.write_text(header + yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    load_config(params_path)  # the result must still be a valid params file
