"""The one place that reads the environment for `scaling_core`.

Everything else receives values: the database URL is passed in, never looked up deep inside.
"""

from __future__ import annotations

import os
from pathlib import Path

DATABASE_URL_ENV = "BATCHPILOT_DATABASE_URL"
"""Environment variable that overrides the default database URL."""

DEFAULT_SQLITE_PATH = Path(".batchpilot") / "batchpilot.db"
"""Default SQLite file, relative to the working directory."""


def default_database_url() -> str:
    """The database URL to use when none is given.

    `$BATCHPILOT_DATABASE_URL` when set, else a SQLite file `.batchpilot/batchpilot.db`
    under the current working directory.
    """
    from_env = os.environ.get(DATABASE_URL_ENV, "").strip()
    if from_env:
        return from_env
    return f"sqlite:///{(Path.cwd() / DEFAULT_SQLITE_PATH).as_posix()}"
