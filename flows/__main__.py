"""Command line: `python -m flows demo | run | report`.

    python -m flows demo                      # the sample job on embedded defaults
    python -m flows run --source items.csv --processor mypkg.mod:process --pipeline nightly
    python -m flows report --json             # the latest run's stages and decisions
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pydantic import BaseModel

    from flows._terminal import TerminalProgress
    from flows.database import StoreDatabase

_Model = TypeVar("_Model", bound="BaseModel")

from flows import _environment


def _parser() -> argparse.ArgumentParser:
    from flows.models import ExecutionOptions
    from scaling_core import ScalingConfig

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
    run.add_argument("--processor", required=True, help="import path package.module:function")
    report = commands.add_parser("report", help="print a stored run's stages and decisions")
    common(report)
    report.add_argument("--run-id", help="the run to show (default: the latest)")
    report.add_argument("--json", action="store_true", help="print one JSON object")
    report.add_argument(
        "--plot", type=Path, metavar="FILE", help="also write a chart of batch size, High share and items/s as SVG"
    )
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
    from scaling_core import ItemSource, ScalingConfig

    if args.command == "demo":
        from scaling_core.samples import PRODUCTS_CSV

        source = ItemSource(path=PRODUCTS_CSV)
        processor = DEFAULT_PROCESSOR
        pipeline = args.pipeline or "demo"
    else:
        source = ItemSource(path=args.source, id_field=args.id_field)
        processor = args.processor
        pipeline = args.pipeline or args.source.stem
    return {
        "source": source,
        "processor": processor,
        "pipeline": pipeline,
        "scaling": _model_values(args, ScalingConfig),
        "execution": _model_values(args, ExecutionOptions),
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

    from flows._interrupt import INTERRUPTED_EXIT_CODE, Interrupted, Interruptible
    from flows._server import temporary_server
    from flows._terminal import TerminalProgress
    from flows.models import ProcessorPath
    from flows.pipeline import batch_pipeline
    from flows.progress import observing
    from flows.report import format_stage_table, stage_rows
    from scaling_core.runs import check_inputs

    # Refuse bad input here, in a fraction of a second, before a flow run starts.
    try:
        TypeAdapter(ProcessorPath).validate_python(parameters["processor"])
    except ValueError:
        raise ValueError(
            f"processor {parameters['processor']!r} is not an import path package.module:function"
        ) from None
    check_inputs(parameters["source"], parameters["processor"], parameters["limit"])

    database = parameters["database"]
    with temporary_server() as server, TerminalProgress(verbose=args.verbose) as shown, observing(shown):
        runner = Interruptible(
            on_stop=lambda: _stopping(shown, quiet=not args.verbose),
            hard_stop=lambda: (shown.close(), server.kill() if server is not None else None),
        )
        try:
            summary = runner.run(lambda: batch_pipeline(**parameters))
        except Interrupted:
            shown.close()
            print(_interrupted_line(shown, database, stopped=runner.stopped), file=sys.stderr)
            if not runner.stopped:  # a processor call that cannot be stopped holds a thread
                if server is not None:
                    server.stop()
                sys.stdout.flush()
                os._exit(INTERRUPTED_EXIT_CODE)
            return INTERRUPTED_EXIT_CODE
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
        f"{ending}"
    )
    return 0 if summary.pending == 0 else 1


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


def _report(args: argparse.Namespace) -> int:
    from sqlalchemy import inspect
    from sqlalchemy.exc import SQLAlchemyError

    from flows.report import format_stage_table, run_report
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
        report = run_report(engine, args.run_id)
    except SQLAlchemyError as error:
        raise StoreError.wrap(url, error) from error
    finally:
        engine.dispose()
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
        f"{run['failed']} failed, {run['pending']} pending"
    )
    print(format_stage_table(report["stages"]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m flows` and of the `batchpilot` command."""
    _environment.apply_defaults()
    # `python -m flows` imports processors from the working directory; so does the script.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    args = _parser().parse_args(argv)
    try:
        if args.command == "report":
            return _report(args)
        return _run(args)
    except (ValueError, LookupError, OSError, TypeError, RuntimeError) as error:
        # Bad input or an unreachable store (StoreError is a RuntimeError): one clear
        # message, no traceback.
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2


def _one_line(error: BaseException) -> str:
    """A pydantic error as one line per problem, without the documentation links."""
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        problems = [
            (f"{'.'.join(str(part) for part in problem['loc'])}: " if problem["loc"] else "") + problem["msg"]
            for problem in error.errors()
        ]
        return f"{error.title}: " + "; ".join(problems)
    return str(error)


if __name__ == "__main__":
    raise SystemExit(main())
