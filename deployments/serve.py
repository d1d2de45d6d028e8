"""Serve the pipeline's deployments from this process, without a work pool.

    python -m deployments.serve

Registers two deployments of `flows.pipeline:batch_pipeline` with the Prefect API named by
`PREFECT_API_URL` and runs their flow runs in subprocesses of this one until it is stopped
(Ctrl+C, or SIGTERM, which pauses their schedules):

- `batch-pipeline/nightly` runs on a cron schedule (`DeploymentSettings`: by default
  "0 2 * * *" in UTC, on the bundled catalogue) with the store of
  `$BATCHPILOT_DATABASE_URL`;
- `batch-pipeline/on-demand` has no schedule: start it from the UI's "Run" form, the API,
  `flows.trigger(...)` or `python -m deployments.trigger`.

Both refuse parameters that break the flow's schema (HTTP 409, before a run exists).
`deployments/prefect.yaml` declares the same two deployments for a `process` work pool.

The entrypoint is the module path `flows.pipeline.batch_pipeline`, not the file
`flows/pipeline.py`: Prefect imports a file entrypoint as a top-level module `pipeline`,
and Dask, which pickles the stage task by reference, then looks for `pipeline` on its
scheduler and workers, where only `flows.pipeline` exists.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from deployments.settings import DeploymentSettings
from flows import _environment
from flows.models import ON_DEMAND_DEPLOYMENT, PIPELINE_FLOW, SCHEDULED_DEPLOYMENT

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

FLOW_NAME = PIPELINE_FLOW
"""The name of `flows.pipeline:batch_pipeline`, the first half of a deployment's full name."""

SCHEDULED = SCHEDULED_DEPLOYMENT
ON_DEMAND = ON_DEMAND_DEPLOYMENT
TAGS = ["batchpilot"]


def build_deployments(settings: DeploymentSettings | None = None) -> list[RunnerDeployment]:
    """The scheduled and the on-demand deployment of the pipeline flow.

    Args:
        settings: what the scheduled deployment runs and when; read from the environment
            (`DeploymentSettings.load`) when not given.

    Example:
        >>> [d.name for d in build_deployments(DeploymentSettings(cron="*/10 * * * *"))]
        ['nightly', 'on-demand']
    """
    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType

    from flows.pipeline import batch_pipeline

    settings = settings or DeploymentSettings.load()
    store = (
        f"the Batchpilot Store block {settings.database!r}"
        if settings.database
        else "$BATCHPILOT_DATABASE_URL of the serving process"
    )
    scheduled = batch_pipeline.to_deployment(
        name=SCHEDULED,
        schedule=Cron(settings.cron, timezone=settings.timezone),
        parameters=settings.parameters(),
        description=(
            f"Runs pipeline {settings.pipeline!r} on {settings.source} at cron {settings.cron!r} "
            f"({settings.timezone}); the store is {store}."
        ),
        tags=TAGS,
        enforce_parameter_schema=True,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    on_demand = batch_pipeline.to_deployment(
        name=ON_DEMAND,
        description=(
            "Runs the pipeline on the source given with the run: from the UI's Run form, the API, "
            "flows.trigger(...) or python -m deployments.trigger."
        ),
        tags=TAGS,
        enforce_parameter_schema=True,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    return [scheduled, on_demand]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m deployments.serve`."""
    argparse.ArgumentParser(
        prog="python -m deployments.serve",
        description=__doc__.splitlines()[0],
        epilog="Settings come from BATCHPILOT_SCHEDULE_* (see deployments/settings.py) and PREFECT_API_URL.",
    ).parse_args(argv)
    _environment.apply_defaults()
    try:
        deployments = build_deployments()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from prefect import serve

    from flows.database import StoreDatabase

    # The UI's form offers the store blocks by name once their type is known to the server.
    StoreDatabase.register_type_and_schema()
    serve(*deployments)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
