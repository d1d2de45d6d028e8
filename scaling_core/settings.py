"""The one place that reads the environment for `scaling_core`: `BATCHPILOT_*` variables.

Everything else receives values: the database URL is passed in, never looked up deep inside.

    BATCHPILOT_DATABASE_URL   the store (default: the SQLite file .batchpilot/batchpilot.db
                              under the working directory)
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "BATCHPILOT_"
"""Prefix of every environment variable the project reads."""

DATABASE_URL_ENV = f"{ENV_PREFIX}DATABASE_URL"
"""Environment variable that overrides the default database URL."""

DEFAULT_SQLITE_PATH = Path(".batchpilot") / "batchpilot.db"
"""Default SQLite file, relative to the working directory."""


class StoreSettings(BaseSettings):
    """Where the store is, from `BATCHPILOT_DATABASE_URL` (blank counts as unset).

    Example:
        >>> StoreSettings(database_url="sqlite:///jobs.db").url()
        'sqlite:///jobs.db'
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", env_ignore_empty=True)

    database_url: SecretStr | None = Field(
        default=None, description="SQLAlchemy URL of the store; the embedded SQLite file when unset."
    )

    def url(self) -> str:
        """The URL to connect to: the configured one, else the SQLite file under the working directory."""
        if self.database_url is not None and self.database_url.get_secret_value().strip():
            return self.database_url.get_secret_value().strip()
        return f"sqlite:///{(Path.cwd() / DEFAULT_SQLITE_PATH).as_posix()}"


def default_database_url() -> str:
    """The database URL to use when none is given.

    `$BATCHPILOT_DATABASE_URL` when set, else a SQLite file `.batchpilot/batchpilot.db`
    under the current working directory.
    """
    return StoreSettings().url()
