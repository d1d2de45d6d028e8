"""The one place where the deployments read the environment: `BATCHPILOT_SCHEDULE_*`.

    BATCHPILOT_SCHEDULE_CRON       cron of the scheduled deployment (default "0 2 * * *", nightly)
    BATCHPILOT_SCHEDULE_TIMEZONE   time zone of that cron (default "UTC")
    BATCHPILOT_SCHEDULE_SOURCE     the file the scheduled runs process (default: the bundled catalogue)
    BATCHPILOT_SCHEDULE_PIPELINE   the pipeline name of the scheduled runs (default "nightly")
    BATCHPILOT_SCHEDULE_PROCESSOR  their processor import path (default: the simulated model)
    BATCHPILOT_SCHEDULE_DATABASE   the name of the `Batchpilot Store` block they use (default: none,
                                   so `$BATCHPILOT_DATABASE_URL` of the process that runs them)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flows.models import DEFAULT_PROCESSOR, ProcessorPath
from scaling_core.samples import PRODUCTS_CSV
from scaling_core.settings import ENV_PREFIX

DEFAULT_CRON = "0 2 * * *"
"""Nightly at 02:00."""

SCHEDULE_PREFIX = f"{ENV_PREFIX}SCHEDULE_"


class DeploymentSettings(BaseSettings):
    """What the scheduled deployment runs, and when (blank variables keep the defaults).

    Example:
        >>> DeploymentSettings(cron="30 1 * * 1-5").cron
        '30 1 * * 1-5'
    """

    model_config = SettingsConfigDict(
        env_prefix=SCHEDULE_PREFIX, extra="ignore", frozen=True, str_strip_whitespace=True
    )

    cron: str = Field(default=DEFAULT_CRON, description="Cron of the scheduled deployment.")
    timezone: str = Field(default="UTC", description="IANA time zone the cron is read in.")
    source: Path = Field(default=PRODUCTS_CSV, description="The file of items the scheduled runs process.")
    pipeline: str = Field(default="nightly", min_length=1, description="Pipeline name of the scheduled runs.")
    processor: ProcessorPath = DEFAULT_PROCESSOR
    database: str | None = Field(
        default=None, min_length=1, description="Name of the Batchpilot Store block the scheduled runs use."
    )

    @model_validator(mode="before")
    @classmethod
    def _blank_is_unset(cls, values: Any) -> Any:
        if isinstance(values, dict):
            return {name: value for name, value in values.items() if not (isinstance(value, str) and not value.strip())}
        return values

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
    def load(cls) -> Self:
        """The settings from the environment.

        Raises:
            ValueError: naming the environment variable whose value is invalid.
        """
        try:
            return cls()
        except ValidationError as error:
            problems = "; ".join(
                f"{SCHEDULE_PREFIX}{str(entry['loc'][0]).upper()}={entry['input']!r}: "
                f"{entry['msg'].removeprefix('Value error, ')}"
                for entry in error.errors()
            )
            raise ValueError(f"invalid deployment settings: {problems}") from None

    def parameters(self) -> dict[str, Any]:
        """The scheduled deployment's parameters; the store block is referred to by its name."""
        parameters: dict[str, Any] = {
            "source": {"path": str(self.source)},
            "processor": self.processor,
            "pipeline": self.pipeline,
        }
        if self.database is not None:
            from flows.database import block_reference

            parameters["database"] = block_reference(self.database)
        return parameters
