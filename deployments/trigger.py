"""Command line: start a run of a deployed pipeline and wait for it.

    python -m deployments.trigger --source /data/items.csv --pipeline catalogue
    python -m deployments.trigger --deployment batch-pipeline/nightly --no-wait
    python -m deployments.trigger --source items.csv --parameters '{"scaling": {"max_batch_size": 120}}'

Options left out take the deployment's defaults. The Prefect API is the one named by
`PREFECT_API_URL`. Exit status: 0 when the run completed (or, with --no-wait, was created),
1 when it failed, crashed, was cancelled or outlived --timeout, 2 when the server refused
the parameters, no such deployment exists or the API cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flows import _environment
from flows.models import DEFAULT_DEPLOYMENT


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"not a JSON object: {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deployments.trigger", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--deployment", default=DEFAULT_DEPLOYMENT, help="'flow/deployment' (default: %(default)s)"
    )
    parser.add_argument(
        "--source", type=Path, help="a .csv, .jsonl or .ndjson file, read by the process that runs the flow"
    )
    parser.add_argument("--id-field", help="id column or key of the source")
    parser.add_argument("--weight-field", help="column or key of each item's weight (tokens, characters, bytes)")
    parser.add_argument("--processor", help="import path package.module:function")
    parser.add_argument("--pipeline", help="name under which runs and learned sizes are kept")
    parser.add_argument("--run-id", help="resume (or share) this run")
    parser.add_argument("--limit", type=int, help="process at most this many items")
    parser.add_argument(
        "--database",
        metavar="BLOCK",
        help="name of the Batchpilot Store block of the run (default: $BATCHPILOT_DATABASE_URL of the worker)",
    )
    parser.add_argument(
        "--parameters",
        type=_json_object,
        default={},
        metavar="JSON",
        help="more parameters as a JSON object, e.g. '{\"execution\": {\"parallelism\": 4}}'; the flags above win",
    )
    parser.add_argument("--no-wait", action="store_true", help="return once the run is created")
    parser.add_argument("--timeout", type=float, help="seconds to wait at most (default: until the run ends)")
    parser.add_argument("--json", action="store_true", help="print the run as one JSON object")
    return parser


def _parameters(args: argparse.Namespace) -> dict[str, Any]:
    from flows.database import block_reference

    parameters: dict[str, Any] = dict(args.parameters)
    if args.source is not None:
        # The run may start in another working directory than this command.
        source = {"path": str(args.source.expanduser().resolve())}
        if args.id_field:
            source["id_field"] = args.id_field
        if args.weight_field:
            source["weight_field"] = args.weight_field
        parameters["source"] = source
    elif args.id_field or args.weight_field:
        raise ValueError(f"{'--id-field' if args.id_field else '--weight-field'} needs --source")
    flags = {
        "processor": args.processor,
        "pipeline": args.pipeline,
        "run_id": args.run_id,
        "limit": args.limit,
        "database": block_reference(args.database) if args.database else None,
    }
    parameters.update({name: value for name, value in flags.items() if value is not None})
    return parameters


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m deployments.trigger`."""
    _environment.apply_defaults()
    args = _parser().parse_args(argv)
    try:
        parameters = _parameters(args)
        import httpx

        from flows.triggering import trigger

        try:
            run = trigger(args.deployment, parameters, wait=not args.no_wait, timeout=args.timeout)
        except httpx.TransportError as error:
            from prefect.settings import PREFECT_API_URL

            raise LookupError(f"cannot reach the Prefect API at {PREFECT_API_URL.value()}: {error}") from None
    except (ValueError, LookupError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(run.model_dump_json(indent=2))
    else:
        ending = f": {run.message}" if run.message else ""
        print(f"flow run {run.flow_run_id} ({run.flow_run_name}) of {run.deployment}: {run.state_name}{ending}")
    if args.no_wait:
        return 0
    return 0 if run.completed else 1


if __name__ == "__main__":
    raise SystemExit(main())
