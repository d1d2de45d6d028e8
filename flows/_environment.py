"""Prefect settings the project needs, set where a process starts (the CLI, `deployments.serve`).

Nothing sets them on import: a program that uses the flows from Python chooses its own.
"""

from __future__ import annotations

import os

PREFECT_DEFAULTS = {
    # Telemetry from a fresh local database logs tracebacks and needs the network.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # The temporary server of ephemeral mode gets 20 s to start by default; a fresh home on a
    # busy machine takes longer, and the run then fails before it began.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}


def apply_defaults(**overrides: str) -> None:
    """Set Prefect's settings that the user has not set; call before prefect is imported."""
    for name, value in {**PREFECT_DEFAULTS, **overrides}.items():
        os.environ.setdefault(name, value)
