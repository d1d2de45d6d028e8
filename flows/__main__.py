"""Command line: `python -m flows demo | run | report | runs | export`.

    python -m flows demo                      # the sample job on embedded defaults
    python -m flows run --source items.csv --processor mypkg.mod:process --pipeline nightly
    python -m flows report --json             # the latest run's stages and decisions
    python -m flows runs                      # every run of the store, newest first
    python -m flows export -o results.csv     # the latest run's results, one row per item

Exit status: 0 done, 1 items left (other workers), 2 bad input or store, 3 stopped by the
budget (`--max-cost`; rerun with a higher one to continue), 128 + the signal's number interrupted
(130 after Ctrl-C, 143 after SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pydantic import BaseModel
    from sqlalchemy import Engine

    from flows._terminal import TerminalProgress
    from flows.database import StoreDatabase

_Model = TypeVar("_Model", bound="BaseModel")

from flows import _environment

BUDGET_EXIT_CODE = 3
"""The exit status of a run stopped by its budget (`--max-cost`): resumable with a higher one."""


def _parser() -> argparse.ArgumentParser:
    from flows.models import ExecutionOptions
    from scaling_core import CostBudget, ScalingConfig

    parser = argparse.ArgumentParser(prog="python -m flows", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def common(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--database-url",
            help="SQLAlchemy URL of the store (default: $BATCHPILOT_DATABASE_URL, else .batchpilot/batchpilot.db)",
        )

    def running(command: argparse.ArgumentParser) -> None:
        common(command)
        command.add_argument("--pipeline", help="name under which runs and learned sizes are kept")
        command.add_argument("--run-id", help="resume this run")
        command.add_argument("--limit", type=int, help="process at most this many items")
        _model_options(command.add_argument_group("scaling limits"), ScalingConfig)
        _model_options(command.add_argument_group("execution"), ExecutionOptions)
        _model_options(command.add_argument_group("cost budget"), CostBudget)
        command.add_argument("--no-warm-start", action="store_true", help="ignore sizes learned by earlier runs")
        command.add_argument(
            "--new-run",
            action="store_true",
            help="start a new run even if the pipeline has an unfinished one (that one is marked superseded)",
        )
        command.add_argument("--verbose", action="store_true", help="show Prefect's run logs")

    demo = commands.add_parser("demo", help="run the bundled sample job on embedded defaults")
    running(demo)
    run = commands.add_parser("run", help="run the pipeline on a source")
    running(run)
    run.add_argument("--source", required=True, type=Path, help="a .csv, .jsonl or .ndjson file")
    run.add_argument("--id-field", default="id", help="id column or key of the source")
    run.add_argument(
        "--weight-field",
        help="column or key of each item's weight (tokens, characters, bytes), for --max-batch-weight and "
        "--cost-per-weight-unit (default: the processor module's item_weight function, if any)",
    )
    run.add_argument(
        "--format", choices=("csv", "jsonl"), help="format of the source (default: from its suffix)"
    )
    run.add_argument("--processor", required=True, help="import path package.module:function")
    report = commands.add_parser("report", help="print a stored run's stages and decisions")
    common(report)
    report.add_argument("--run-id", help="the run to show (default: the latest)")
    report.add_argument("--pipeline", help="show the latest run of this pipeline")
    report.add_argument("--json", action="store_true", help="print one JSON object")
    report.add_argument(
        "--plot", type=Path, metavar="FILE", help="also write a chart of batch size, High share and items/s as SVG"
    )
    report.add_argument("--wide", action="store_true", help="show each decision's reason in full")
    runs = commands.add_parser("runs", help="list the store's runs, newest first")
    common(runs)
    runs.add_argument("--pipeline", help="only the runs of this pipeline")
    runs.add_argument("--json", action="store_true", help="print one JSON object per line")
    export = commands.add_parser("export", help="write a run's results, one row per item")
    common(export)
    export.add_argument("--run-id", help="the run to export (default: the latest)")
    export.add_argument("--pipeline", help="export the latest run of this pipeline")
    export.add_argument("-o", "--output", help="file to write (default, or -: stdout)")
    export.add_argument(
        "--format", choices=("csv", "jsonl", "parquet"), help="csv, jsonl or parquet (default: from the output's suffix, else csv)"
    )
    export.add_argument("--with-source", action="store_true", help="add each item's fields from the source")
    return parser


def _model_options(group: Any, model: type[BaseModel]) -> None:
    """One option per field of `model`, named and described as the field is.

    Values are parsed by the model itself (`_model_values`), so a new field is an option
    at once, with the model's own checks and error messages.
    """
    for name, field in model.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = field.default
        if field.annotation is bool:
            group.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                help=f"{field.description} (default: {default})",
            )
        else:
            shown = "none" if default is None else default
            group.add_argument(flag, dest=name, metavar=name.upper(), help=f"{field.description} (default: {shown})")


def _model_values(args: argparse.Namespace, model: type[_Model]) -> _Model:
    """`model` built from the options the user gave; the others keep the model's defaults."""
    given = {name: getattr(args, name) for name in model.model_fields if getattr(args, name, None) is not None}
    return model.model_validate(given, strict=False)


def _pipeline_parameters(args: argparse.Namespace) -> dict[str, Any]:
    from flows.database import StoreDatabase
    from flows.models import DEFAULT_PROCESSOR, ExecutionOptions
    from scaling_core import CostBudget, ItemSource, ScalingConfig

    if args.command == "demo":
        from scaling_core.samples import PRODUCTS_CSV

        source = ItemSource(path=PRODUCTS_CSV)
        processor = DEFAULT_PROCESSOR
        pipeline = args.pipeline or "demo"
    else:
        source = ItemSource(
            path=args.source, id_field=args.id_field, format=args.format, weight_field=args.weight_field
        )
        processor = args.processor
        pipeline = args.pipeline or args.source.stem
    return {
        "source": source,
        "processor": processor,
        "pipeline": pipeline,
        "scaling": _model_values(args, ScalingConfig),
        "execution": _model_values(args, ExecutionOptions),
        "budget": _model_values(args, CostBudget),
        # A block from the start: Prefect stores a flow run's parameters as they were
        # passed, and a block's password is kept masked.
        "database": StoreDatabase.from_url(args.database_url) if args.database_url else StoreDatabase.from_settings(),
        "limit": args.limit,
        "run_id": args.run_id,
        "warm_start": not args.no_warm_start,
        "new_run": args.new_run,
    }


def _run(args: argparse.Namespace) -> int:
    if not args.verbose:
        _environment.apply_defaults(PREFECT_LOGGING_LEVEL="WARNING")
    parameters = _pipeline_parameters(args)
    from pydantic import TypeAdapter

    from flows._interrupt import Interrupted, Interruptible
    from flows._server import temporary_server
    from flows._terminal import TerminalProgress
    from flows.models import ProcessorPath
    from flows.pipeline import batch_pipeline
    from flows.progress import observing
    from flows.report import format_stage_table, stage_rows
    from scaling_core.runs import (
        BudgetReached,
        RunRequest,
        check_inputs,
        check_resumable,
    )

    # Refuse bad input here, in a fraction of a second, before a flow run starts.
    try:
        TypeAdapter(ProcessorPath).validate_python(parameters["processor"])
    except ValueError:
        raise ValueError(
            f"processor {parameters['processor']!r} is not an import path package.module:function"
        ) from None
    check_inputs(parameters["source"], parameters["processor"], parameters["limit"])
    _check_store(parameters["database"])
    with parameters["database"] as database, database.named_errors():
        check_resumable(
            database.get_engine(),
            RunRequest(
                source=parameters["source"],
                processor=parameters["processor"],
                pipeline=parameters["pipeline"],
                limit=parameters["limit"],
                run_id=parameters["run_id"],
                new_run=parameters["new_run"],
            ),
        )

    database = parameters["database"]
    with temporary_server() as server, TerminalProgress(verbose=args.verbose) as shown, observing(shown):
        runner = Interruptible(
            on_stop=lambda: _stopping(shown, quiet=not args.verbose),
            hard_stop=lambda: (shown.close(), server.kill() if server is not None else None),
        )
        try:
            summary = runner.run(lambda: batch_pipeline(**parameters))
        except BudgetReached as reached:
            shown.close()
            print(str(reached), file=sys.stderr)
            return BUDGET_EXIT_CODE
        except Interrupted as stop:
            shown.close()
            print(_interrupted_line(shown, database, stopped=runner.stopped), file=sys.stderr)
            if not runner.stopped:  # a processor call that cannot be stopped holds a thread
                if server is not None:
                    server.stop()
                sys.stdout.flush()
                os._exit(stop.exit_code)
            return stop.exit_code
    with database:
        rows = stage_rows(database.get_engine(), summary.run_id)
    print(format_stage_table(rows))
    print()
    ending = (
        "; this worker completed the run"
        if summary.completed_here
        else f"; {summary.in_progress} items are still being processed by other workers of the run"
        if summary.in_progress
        else ""
    )
    print(
        f"run {summary.run_id}: {summary.done} of {summary.items} items done, {summary.failed} failed for good, "
        f"{summary.pending} pending; {summary.stages} stages, sizes {min(summary.sizes_used, default=0)}"
        f"..{max(summary.sizes_used, default=0)}, High share {summary.high_share:.3f}, {summary.seconds:.1f} s"
        f"{_spent(summary.weight, summary.cost)}{ending}"
    )
    return 0 if summary.pending == 0 else 1


def _spent(weight: float | None, cost: float | None) -> str:
    """`, weight 12,345, cost $0.0123` for a run that weighs or prices its items; empty otherwise."""
    from scaling_core.budget import dollars

    return (f", weight {weight:,.0f}" if weight is not None else "") + (
        f", cost {dollars(cost)}" if cost is not None else ""
    )


def _stopping(shown: TerminalProgress, *, quiet: bool) -> None:
    """The first Ctrl-C or SIGTERM: say what happens, and keep Prefect's crash lines off the screen."""
    import logging

    shown.close()
    if quiet:
        logging.getLogger("prefect").setLevel(logging.CRITICAL)
    # From a signal handler: a plain write, no buffered stream.
    os.write(2, b"\nstopping: this stage's items go back to pending (Ctrl-C again to stop at once)\n")


def _interrupted_line(shown: TerminalProgress, database: StoreDatabase, *, stopped: bool) -> str:
    """The one line after an interrupted run: how far it got and how to go on."""
    from scaling_core import store

    if shown.run_id is None:
        return "interrupted before the run started; nothing was processed. Rerun the same command to start it"
    if shown.interrupted is not None:
        finished, total = shown.interrupted.finished, shown.interrupted.total
    else:
        with database, store.open_session(database.get_engine()) as session:
            counts = store.count_items(session, shown.run_id)
        finished, total = counts.done + counts.failed, counts.total
    late = "" if stopped else " (a processor call was still running and was abandoned)"
    return (
        f"interrupted after {finished} of {total} items{late}; run {shown.run_id} is resumable: "
        "rerun the same command to resume"
    )


def _check_store(database: Any) -> None:
    """Connect to the run's store once before a flow run starts: a missing driver or an
    unreachable database is one line here, not a failed flow run."""
    with database, database.named_errors():
        database.get_engine()


@contextmanager
def _reading(args: argparse.Namespace) -> Iterator[Engine]:
    """An engine on the store to read, its errors as one line naming the database."""
    from sqlalchemy import inspect
    from sqlalchemy.exc import SQLAlchemyError

    from scaling_core import default_database_url
    from scaling_core.store import StoreError, make_engine, parse_url, redact_url

    url = args.database_url or default_database_url()
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and not Path(parsed.database).exists():
        raise LookupError(f"no store at {redact_url(url)}: the SQLite file does not exist")
    engine = make_engine(url)
    try:
        if not inspect(engine).has_table("pipeline_run"):
            raise LookupError(f"the store at {redact_url(url)} holds no run yet")
        yield engine
    except SQLAlchemyError as error:
        raise StoreError.wrap(url, error) from error
    finally:
        engine.dispose()


def _report(args: argparse.Namespace) -> int:
    from flows.report import format_stage_table, run_report

    with _reading(args) as engine:
        report = run_report(engine, args.run_id, pipeline=args.pipeline)
    if args.plot:
        from flows.chart import stage_chart

        run = report["run"]
        args.plot.write_text(stage_chart(report["stages"], title=f"{run['pipeline']}: run {run['run_id']}"))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    run = report["run"]
    print(
        f"run {run['run_id']} of {run['pipeline']} ({run['status']}): {run['items']} items, {run['done']} done, "
        f"{run['failed']} failed, {run['pending']} pending{_spent(run['weight'], run['cost'])}"
    )
    print(format_stage_table(report["stages"], reason_width=None if args.wide else 70))
    return 0


def _runs(args: argparse.Namespace) -> int:
    from scaling_core.store import list_runs

    with _reading(args) as engine:
        runs = list_runs(engine, pipeline=args.pipeline)
    if args.json:
        for run in runs:
            print(run.model_dump_json())
        return 0
    if not runs:
        print(f"no run of pipeline {args.pipeline!r} in the store" if args.pipeline else "no run in the store")
        return 0
    width = max(len("pipeline"), *(len(run.pipeline) for run in runs))
    print(f"{'pipeline':<{width}}  {'run id':<32}  {'status':<10}  {'items':>9}  {'done':>9}  started (UTC)")
    for run in runs:
        print(
            f"{run.pipeline:<{width}}  {run.run_id:<32}  {run.status.value:<10}  {run.items:>9}  {run.done:>9}  "
            f"{run.started:%Y-%m-%d %H:%M:%S}"
        )
    return 0


def _export(args: argparse.Namespace) -> int:
    from flows.export import export_format, write_results
    from scaling_core.store import find_run, iter_results, open_session

    output = None if args.output in (None, "-") else Path(args.output)
    chosen = export_format(output, args.format)
    with _reading(args) as engine:
        with open_session(engine) as session:
            run_id = find_run(session, run_id=args.run_id, pipeline=args.pipeline).run_id
        count = write_results(iter_results(engine, run_id, with_source=args.with_source), output, chosen, sys.stdout)
    if output is not None:
        print(f"wrote {count} items of run {run_id} to {output} ({chosen})", file=sys.stderr)
    return 0


_COMMANDS = {"report": _report, "runs": _runs, "export": _export}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m flows` and of the `batchpilot` command."""
    _environment.apply_defaults()
    # `python -m flows` imports processors from the working directory; so does the script.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS.get(args.command, _run)(args)
    except BrokenPipeError:
        # The reader went away (`report | head -1`): stop quietly. Python would report the
        # pipe again when it flushes stdout at exit, so stdout goes to devnull first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ValueError, LookupError, OSError, TypeError, RuntimeError) as error:
        # Bad input or an unreachable store (StoreError is a RuntimeError): one clear
        # message, no traceback.
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2


def _one_line(error: BaseException) -> str:
    """An error as one line; a pydantic error in plain words, naming the option and the value given.

    "ScalingConfig: scaling_factor: Input should be greater than 1" becomes
    "--scaling-factor 0.5: input should be greater than 1".
    """
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        problems = []
        for problem in error.errors():
            message = problem["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
            message = message[:1].lower() + message[1:]
            if not problem["loc"]:
                problems.append(message)
                continue
            field = str(problem["loc"][0])
            option = _OPTION_OF_FIELD.get(field, "--" + field.replace("_", "-"))
            given = problem.get("input")
            shown = f" {given}" if isinstance(given, str | int | float) and len(problem["loc"]) == 1 else ""
            problems.append(f"{option}{shown}: {message}")
        return "; ".join(problems)
    from scaling_core.store import StoreError

    if isinstance(error, StoreError):
        return f"{error}; check that the database is up and reachable, or give another --database-url"
    return str(error)


_OPTION_OF_FIELD = {"path": "--source"}
"""Command-line options whose name is not the field's (the rest are `--field-name`)."""


if __name__ == "__main__":
    raise SystemExit(main())
