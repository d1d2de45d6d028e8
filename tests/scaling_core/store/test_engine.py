"""Engines, the schema and the locks, on real databases: SQLite files and, in CI, PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, text

from scaling_core import store
from scaling_core.settings import DATABASE_URL_ENV, default_database_url
from scaling_core.store.engine import worker_lock_key

TABLES = {"pipeline_run", "ledger_item", "batch_record", "scaling_decision"}


def test_schema_creation_is_idempotent(engine: Engine) -> None:
    store.create_schema(engine)
    store.create_schema(engine)
    assert TABLES <= set(inspect(engine).get_table_names())


def test_schema_creation_at_the_same_moment_is_safe_on_a_sqlite_file(tmp_path: Path) -> None:
    engines = [store.make_engine(f"sqlite:///{tmp_path / 'deep' / 'store.db'}") for _ in range(4)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(engines))

    def create(engine: Engine) -> None:
        start.wait()
        try:
            store.create_schema(engine)
        except BaseException as error:  # collected: a thread's exception would be lost
            errors.append(error)

    threads = [threading.Thread(target=create, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert TABLES <= set(inspect(engines[0]).get_table_names())
        assert (tmp_path / "deep" / "store.db.schema-lock").exists()
    finally:
        for engine in engines:
            engine.dispose()


@pytest.mark.postgres
def test_a_worker_lock_the_database_dropped_is_taken_again(postgres_url: str) -> None:
    engine = store.make_engine(postgres_url)
    key = worker_lock_key("w-1")

    def someone_else_can_take_it() -> bool:
        with engine.connect() as other:
            got = bool(other.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar())
            if got:
                other.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            return got

    lock = store.hold_worker_lock(engine, "w-1")
    assert lock is not None
    try:
        assert not someone_else_can_take_it()
        assert lock.refresh() is False
        # The database ends the lock's session, as a restart or a network cut would.
        with engine.connect() as admin:
            admin.execute(
                text(
                    "SELECT pg_terminate_backend(pid, 5000) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND granted AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                )
            )
            admin.commit()
        assert someone_else_can_take_it()
        assert lock.refresh() is True
        assert not someone_else_can_take_it()
    finally:
        lock.close()
        assert someone_else_can_take_it()
        engine.dispose()


def test_only_postgresql_needs_a_worker_lock(engine: Engine) -> None:
    lock = store.hold_worker_lock(engine, "w-1")
    try:
        if engine.dialect.name == "sqlite":
            assert lock is None  # a single writer: no other process works on the run
        else:
            assert isinstance(lock, store.WorkerLock)
    finally:
        if lock is not None:
            lock.close()


def test_default_url_is_a_sqlite_file_under_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_database_url() == f"sqlite:///{tmp_path}/.batchpilot/batchpilot.db"
    monkeypatch.setenv(DATABASE_URL_ENV, "postgresql+psycopg://u@h/db")
    assert default_database_url() == "postgresql+psycopg://u@h/db"


def test_redacted_urls_hide_the_password() -> None:
    assert store.redact_url("postgresql+psycopg://user:s3cret@host:5432/db") == (
        "postgresql+psycopg://user:***@host:5432/db"
    )
    assert "s3cret" not in store.redact_url("not a url s3cret")


def test_store_errors_name_the_database_without_its_password() -> None:
    error = store.StoreError.wrap("postgresql+psycopg://user:s3cret@host/db", ValueError("no route\nmore"))
    assert str(error) == "the store at postgresql+psycopg://user:***@host/db failed: ValueError: no route"


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("postgresql://app@db/jobs?password=s3cret", "postgresql://app@db/jobs?password=***"),
        ("postgresql://app:s3cret@db/jobs?sslmode=require&PWD=s3cret", "postgresql://app:***@db/jobs?PWD=***&sslmode=require"),
    ],
)
def test_a_password_given_as_a_url_option_is_masked_too(url: str, redacted: str) -> None:
    assert store.redact_url(url) == redacted
