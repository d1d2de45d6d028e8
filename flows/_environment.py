"""The one place where the flows choose Prefect settings from the environment."""

from __future__ import annotations

import os

PREFECT_DEFAULTS = {
    # Telemetry from a fresh local database logs tracebacks and needs the network.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def apply_defaults(**overrides: str) -> None:
    """Set Prefect's settings that the user has not set; call before prefect is imported."""
    for name, value in {**PREFECT_DEFAULTS, **overrides}.items():
        os.environ.setdefault(name, value)
