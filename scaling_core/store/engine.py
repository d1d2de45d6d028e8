"""Engines, sessions, the schema, and the locks that keep several processes apart.

No engine is built at import time: callers hand in a URL and get an engine back. On
PostgreSQL a worker holds a session advisory lock while it is alive (`hold_worker_lock`),
so that the claims of a dead worker can be told from a live one's.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from sqlalchemy import Connection, Engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, SQLModel, create_engine

from scaling_core.store.deadline import DEFAULT_TIMEOUT, add_client_deadline, postgres_connect_args

# The tables must be registered on `SQLModel.metadata` before `create_schema` runs.
from scaling_core.store import tables as _tables  # noqa: F401


class StoreError(RuntimeError):
    """The store could not be read or written; the message names the database (no password)."""

    @classmethod
    def wrap(cls, url: str, error: Exception) -> StoreError:
        """A `StoreError` for `error` raised by the database at `url`: its first line, the URL redacted."""
        detail = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        return cls(f"the store at {redact_url(url)} failed: {type(error).__name__}: {detail}")


def make_engine(url: str, *, echo: bool = False, timeout: float = DEFAULT_TIMEOUT) -> Engine:
    """Build an engine for `url`: a SQLite file (parent folders created) or PostgreSQL.

    `sqlite://` (no path) gives one shared in-memory database, handy in tests.
    PostgreSQL URLs use psycopg 3: `postgresql+psycopg://user@host:5432/db`. Statement
    parameters (item payloads and outputs) are kept out of error messages and logs.

    Every call is bounded by `timeout` seconds: on SQLite the wait for the write lock, on
    PostgreSQL the connection set-up, a statement, a lock wait, and an answer that never
    comes (see `scaling_core.store.deadline`).
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            return create_engine(
                url,
                echo=echo,
                hide_parameters=True,
                connect_args={"check_same_thread": False},
                poolclass=StaticPool,
            )
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, echo=echo, hide_parameters=True, connect_args={"check_same_thread": False, "timeout": timeout}
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    try:
        engine = create_engine(
            url,
            echo=echo,
            hide_parameters=True,
            connect_args=postgres_connect_args(timeout, dict(parsed.query)),
        )
    except ImportError as error:
        raise ValueError(_missing_driver(url, parsed, error)) from None
    add_client_deadline(engine, timeout)
    return engine


POSTGRES_EXTRA = "batchpilot[postgres]"
"""The optional extra that brings the PostgreSQL driver, psycopg."""


def _missing_driver(url: str, parsed: URL, error: ImportError) -> str:
    driver = parsed.get_driver_name()
    module = error.name or driver
    if driver == "psycopg":
        fix = f"install {POSTGRES_EXTRA}"
    else:
        fix = f"install {POSTGRES_EXTRA} and write the URL as postgresql+psycopg://... (or install {module})"
    return f"the store URL {redact_url(url)} needs the driver {module!r}, which is not installed: {fix}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers (report, the UI's scaling task) run while a stage writes;
    # NORMAL sync is durable across process crashes (not power loss), which is the
    # failure this ledger is built to survive.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


SECRET_QUERY_KEYS = frozenset({"password", "passwd", "pwd"})
"""URL options that carry a password (psycopg and libpq read `password` from the query too)."""


def parse_url(text: str) -> URL:
    """`text` as a SQLAlchemy URL of a supported database.

    Raises:
        ValueError: naming the URL (its password masked as written) and what is wrong with it.
    """
    try:
        parsed = make_url(text.strip())
    except ArgumentError:
        raise ValueError(
            f"the database URL {_masked(text)} cannot be read: it is not a URL such as "
            "postgresql+psycopg://user@host:5432/database or sqlite:///path/to/file.db"
        ) from None
    except ValueError:  # SQLAlchemy reads the port with int()
        raise ValueError(f"the database URL {_masked(text)} cannot be read: its port is not a number") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(
            f"the database URL {redact_url(text)} is for {parsed.get_backend_name()!r}: "
            "the store runs on PostgreSQL or SQLite"
        )
    return parsed


def _masked(text: str) -> str:
    # The URL as the user wrote it, for an error about a URL SQLAlchemy could not read:
    # whatever stands between `user:` and `@` is taken for a password.
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", text.strip())


def redact_url(url: str) -> str:
    """`url` with any password (`user:***@`, `?password=***`) masked, safe for logs and errors.

    Example:
        >>> redact_url("postgresql://app:pw@db/jobs?sslmode=require&password=pw")
        'postgresql://app:***@db/jobs?password=***&sslmode=require'
    """
    try:
        parsed = make_url(url)
    except Exception:  # an unparsable URL: show no part of it that could hold a secret
        return "<unparsable database URL>"
    secret_keys = [key for key in parsed.query if key.lower() in SECRET_QUERY_KEYS]
    if secret_keys:
        parsed = parsed.update_query_dict({key: "***" for key in secret_keys})
    # URL-quoting would turn the mask into %2A%2A%2A.
    return parsed.render_as_string(hide_password=True).replace("%2A%2A%2A", "***")


def open_session(engine: Engine) -> Session:
    """A session whose objects stay readable after commit (they are handed back to callers)."""
    return Session(engine, expire_on_commit=False)


def create_schema(engine: Engine) -> None:
    """Create the tables and indexes that do not exist yet (idempotent).

    Safe when several processes create the schema at the same moment: on PostgreSQL a
    transaction-scoped advisory lock serialises them (their CREATE TYPE / CREATE TABLE would
    otherwise collide); on a SQLite file an exclusive lock on a file beside it does
    (`filelock`, so that it works on Windows too).
    """
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if database and database != ":memory:":
        with FileLock(f"{database}.schema-lock"):
            SQLModel.metadata.create_all(engine)
            with engine.begin() as connection:
                _upgrade(connection)
        return
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('batchpilot.create_schema'))"))
        SQLModel.metadata.create_all(connection)
        if connection.dialect.name == "postgresql":
            # A store made before a status existed: PostgreSQL keeps enum values in a type.
            for value in _tables.RunStatus:
                connection.execute(text(f"ALTER TYPE runstatus ADD VALUE IF NOT EXISTS '{value.name}'"))
        _upgrade(connection)


def _upgrade(connection: Connection) -> None:
    # `create_all` makes missing tables only: what later versions added to existing tables
    # is added here, to stores made before.
    added = {
        "batch_record": {
            "suspects_of": "INTEGER",
            "total_weight": "FLOAT",
            "cost": "FLOAT",
            "rate_limited_calls": "INTEGER NOT NULL DEFAULT 0",
            "rate_wait_seconds": "FLOAT NOT NULL DEFAULT 0",
            "ended_at": "FLOAT",
        },
        "ledger_item": {"weight": "FLOAT", "cost": "FLOAT"},
    }
    for table, columns in added.items():
        present = {column["name"] for column in inspect(connection).get_columns(table)}
        for name, kind in columns.items():
            if name not in present:
                connection.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {kind}"))
    _tables.RETRY_INDEX.create(connection, checkfirst=True)


def is_postgres(engine: Engine) -> bool:
    """True when `engine` talks to PostgreSQL (several writers; advisory locks)."""
    return engine.dialect.name == "postgresql"


def worker_lock_key(worker: str) -> int:
    """The advisory-lock key that says `worker` is alive: a stable hash of its name."""
    # pg_advisory_lock takes a signed 64-bit key.
    digest = hashlib.blake2b(f"batchpilot-worker:{worker}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class WorkerLock:
    """A PostgreSQL session advisory lock that says `worker` is alive, held on a connection of its own.

    The lock vanishes with a dead process's connection, so `recover_dead_claims` can tell a
    crashed worker's claims from a live one's. It also vanishes when the database restarts
    or the network drops the connection: `refresh` notices and takes it again.
    """

    def __init__(self, engine: Engine, worker: str) -> None:
        self.engine = engine
        self.worker = worker
        self._key = worker_lock_key(worker)
        self._connection: Connection | None = None
        self._take()

    def _take(self) -> None:
        connection = self.engine.connect()
        try:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": self._key})
            connection.commit()
        except BaseException:
            connection.close()
            raise
        self._connection = connection

    def refresh(self) -> bool:
        """Make sure the lock is held; returns True when it had been lost and was taken again.

        Raises a SQLAlchemy error when the database cannot be reached to take it again.
        """
        if self._connection is not None:
            try:
                self._connection.execute(text("SELECT 1"))
                self._connection.commit()
                return False
            except DBAPIError as error:
                if not error.connection_invalidated:
                    raise
                self._connection.close()
                self._connection = None
        self._take()
        return True

    def close(self) -> None:
        """Release the lock (the worker stops)."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        # A session lock outlives `close()` on a pooled connection: unlock it, and should
        # that fail, drop the database connection itself rather than return it to the pool.
        try:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
            connection.commit()
        except DBAPIError:
            connection.invalidate()
        finally:
            connection.close()


def hold_worker_lock(engine: Engine, worker: str) -> WorkerLock | None:
    """On PostgreSQL, take the lock that says `worker` is alive (see `WorkerLock`).

    Close it when the worker stops. SQLite needs none (single writer): returns None.
    """
    if not is_postgres(engine):
        return None
    return WorkerLock(engine, worker)


class RunBusy(RuntimeError):
    """Another live process holds the run on this SQLite store."""


class RunFileLock:
    """On a SQLite file, the lock that says a live process works on a run: one per run and file.

    An exclusive lock on a file beside the database (`<database>.run-<run_id>.lock`); the
    operating system drops it with the process, crash included, so a rerun after a crash is
    never refused. SQLite has a single writer, and its claims carry no liveness of their own:
    without this lock a second process would take back the first one's claims and process
    them again.
    """

    def __init__(self, database: str, run_id: str) -> None:
        self.path = f"{database}.run-{run_id}.lock"
        self.run_id = run_id
        self._lock = FileLock(self.path, timeout=0)

    def acquire(self) -> None:
        """Take the lock, or raise `RunBusy` at once when another live process holds it."""
        try:
            self._lock.acquire()
        except Timeout:
            raise RunBusy(
                f"run {self.run_id} is being processed by another live process on this SQLite store "
                f"(it holds {self.path}); wait for it to finish, or use PostgreSQL to run several workers"
            ) from None

    def close(self) -> None:
        """Release the lock (the process is done with the run)."""
        self._lock.release(force=True)


def hold_run_lock(engine: Engine, run_id: str) -> RunFileLock | None:
    """On a SQLite file, take `RunFileLock` for `run_id` (raises `RunBusy` if another process holds it).

    PostgreSQL needs none (its workers share a run; see `hold_worker_lock`); neither does an
    in-memory database, which no other process can open. Close it when the run stops.
    """
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        return None
    lock = RunFileLock(database, run_id)
    lock.acquire()
    return lock


def insert_ignoring_conflicts(session: Session, table: Any) -> Any:
    """An INSERT into `table` that skips rows whose key exists, in the session's SQL dialect."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing()
    raise ValueError(f"unsupported database dialect {dialect!r}: use SQLite or PostgreSQL")
