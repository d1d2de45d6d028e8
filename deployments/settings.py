"""The one place where the deployments read the environment.

    BATCHPILOT_SCHEDULE_CRON       cron of the scheduled deployment (default "0 2 * * *", nightly)
    BATCHPILOT_SCHEDULE_TIMEZONE   time zone of that cron (default "UTC")
    BATCHPILOT_SCHEDULE_SOURCE     the file the scheduled runs process (default: the bundled catalogue)
    BATCHPILOT_SCHEDULE_PIPELINE   the pipeline name of the scheduled runs (default "nightly")
    BATCHPILOT_SCHEDULE_PROCESSOR  their processor import path (default: the simulated model)

The store is not chosen here: runs without a `database_url` parameter use
`$BATCHPILOT_DATABASE_URL` of the process that runs them (see `scaling_core.settings`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flows.models import DEFAULT_PROCESSOR, ProcessorPath
from scaling_core.samples import PRODUCTS_CSV

DEFAULT_CRON = "0 2 * * *"
"""Nightly at 02:00."""

ENVIRONMENT = {
    "cron": "BATCHPILOT_SCHEDULE_CRON",
    "timezone": "BATCHPILOT_SCHEDULE_TIMEZONE",
    "source": "BATCHPILOT_SCHEDULE_SOURCE",
    "pipeline": "BATCHPILOT_SCHEDULE_PIPELINE",
    "processor": "BATCHPILOT_SCHEDULE_PROCESSOR",
}
"""Setting name -> the environment variable that overrides it."""


class DeploymentSettings(BaseModel):
    """What the scheduled deployment runs, and when.

    Example:
        >>> DeploymentSettings.from_environment({"BATCHPILOT_SCHEDULE_CRON": "30 1 * * 1-5"}).cron
        '30 1 * * 1-5'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    cron: str = Field(default=DEFAULT_CRON, description="Cron of the scheduled deployment.")
    timezone: str = Field(default="UTC", description="IANA time zone the cron is read in.")
    source: Path = Field(default=PRODUCTS_CSV, description="The file of items the scheduled runs process.")
    pipeline: str = Field(default="nightly", min_length=1, description="Pipeline name of the scheduled runs.")
    processor: ProcessorPath = DEFAULT_PROCESSOR

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, value: str) -> str:
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=value)
        except ValidationError:
            raise ValueError("not a cron expression of five fields such as '0 2 * * *'") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("not an IANA time zone such as 'UTC' or 'Europe/Berlin'") from None
        return value

    @field_validator("source")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        # The runs may start in another working directory than the one that served them.
        return path.expanduser().resolve()

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> DeploymentSettings:
        """The settings with every variable of `ENVIRONMENT` that is set (and not blank) applied.

        Raises:
            ValueError: naming the environment variable whose value is invalid.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {
            name: environ[variable].strip()
            for name, variable in ENVIRONMENT.items()
            if environ.get(variable, "").strip()
        }
        try:
            return cls(**values)
        except ValidationError as error:
            problems = "; ".join(
                f"{ENVIRONMENT[str(entry['loc'][0])]}={entry['input']!r}: "
                f"{entry['msg'].removeprefix('Value error, ')}"
                for entry in error.errors()
            )
            raise ValueError(f"invalid deployment settings: {problems}") from None
