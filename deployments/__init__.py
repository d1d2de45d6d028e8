"""Deployments of the pipeline flow: served from a process, or for a `process` work pool.

    python -m deployments.serve      # serve batch-pipeline/nightly and batch-pipeline/on-demand
    python -m deployments.trigger    # start a run of one and wait for it
    prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml

Names are imported on first use, so that `--help` does not pay for importing prefect.
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from deployments.serve import FLOW_NAME, ON_DEMAND, SCHEDULED, build_deployments
    from deployments.settings import DeploymentSettings

__all__ = ["FLOW_NAME", "ON_DEMAND", "SCHEDULED", "DeploymentSettings", "build_deployments"]

_HOMES = {
    "FLOW_NAME": "deployments.serve",
    "ON_DEMAND": "deployments.serve",
    "SCHEDULED": "deployments.serve",
    "DeploymentSettings": "deployments.settings",
    "build_deployments": "deployments.serve",
}


def __getattr__(name: str) -> _typing.Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'deployments' has no attribute {name!r}")
    return getattr(_importlib.import_module(home), name)
