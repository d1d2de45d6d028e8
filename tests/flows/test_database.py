"""The store as a Prefect Block: parts checked when it is made, the password a secret, one engine."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr, TypeAdapter, ValidationError
from sqlalchemy import inspect

from flows.database import DatabaseParameter, StoreDatabase, block_reference

SECRET = "s3cr3t-Pa55"


def test_a_postgres_url_becomes_parts_with_a_secret_password() -> None:
    db = StoreDatabase.from_url(f"postgresql+psycopg://app:{SECRET}@db.internal:6543/jobs?sslmode=require")
    assert (db.driver, db.host, db.port, db.username, db.database, db.query) == (
        "postgresql+psycopg", "db.internal", 6543, "app", "jobs", {"sslmode": "require"},
    )
    assert db.password is not None and db.password.get_secret_value() == SECRET
    assert SECRET not in repr(db) and SECRET not in db.model_dump_json()
    assert db.display_url() == "postgresql+psycopg://app:***@db.internal:6543/jobs?sslmode=require"


def test_a_password_given_as_a_url_option_is_kept_secret_too() -> None:
    db = StoreDatabase.from_url(SecretStr(f"postgresql://app@db/jobs?password={SECRET}&sslmode=require"))
    assert db.password is not None and db.password.get_secret_value() == SECRET
    assert db.query == {"sslmode": "require"}
    assert SECRET not in db.display_url() and SECRET not in db.model_dump_json()


def test_a_sqlite_url_is_a_file(tmp_path: Path) -> None:
    db = StoreDatabase.from_url(f"sqlite:///{tmp_path / 'store.db'}")
    assert (db.driver, db.database, db.host) == ("sqlite", str(tmp_path / "store.db"), None)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://root@localhost/db", "the database URL mysql://root@localhost/db is for 'mysql'"),
        (
            f"postgresql://app:{SECRET}@db:54x2/jobs",
            "the database URL postgresql://app:***@db:54x2/jobs cannot be read: its port is not a number",
        ),
        ("not a url", "the database URL not a url cannot be read: it is not a URL such as"),
    ],
)
def test_an_unusable_url_is_named_without_its_password(url: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)) as caught:
        StoreDatabase.from_url(url)
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ({"driver": "sqlite", "database": "x.db", "host": "db"}, "a SQLite store is a file"),
        ({"driver": "postgresql+psycopg", "database": "jobs"}, "a PostgreSQL store needs a host"),
        ({"host": "db", "database": "jobs", "query": {"password": "x"}}, "put the password in the password field"),
        ({"host": "db", "database": "jobs", "port": 0}, "port"),
    ],
)
def test_bad_parts_are_refused_when_the_block_is_made(parts: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        StoreDatabase.model_validate(parts)


def test_one_engine_per_block_with_its_schema_disposed_at_the_end(tmp_path: Path) -> None:
    with StoreDatabase.from_url(f"sqlite:///{tmp_path / 'store.db'}") as db:
        engine = db.get_engine()
        assert db.get_engine() is engine
        assert "pipeline_run" in inspect(engine).get_table_names()
    assert db._engine is None  # disposed: the next run makes a new pool
    assert db.get_engine() is not engine
    db.dispose()


def test_the_flow_parameter_takes_a_block_a_secret_url_or_a_plain_url(tmp_path: Path) -> None:
    adapter: TypeAdapter[StoreDatabase | None] = TypeAdapter(DatabaseParameter)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    block = StoreDatabase.from_url(url)
    assert adapter.validate_python(block) is block
    assert adapter.validate_python(SecretStr(url)) == block
    assert adapter.validate_python(url) == block
    assert adapter.validate_python(None) is None


def test_a_block_is_referred_to_by_its_type_and_name() -> None:
    assert block_reference("shared") == {"$ref": {"block_document_slug": "batchpilot-store/shared"}}
