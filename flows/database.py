"""The store's database as a Prefect Block: chosen by name in the UI, its password a secret.

    prefect block register -m flows.database       # once per Prefect server (serve does it too)

Modelled on prefect-sqlalchemy's `SqlAlchemyConnector`: the block holds the URL's parts
with the password as a `SecretStr`, checks them when it is made, caches one engine and
disposes it when the run that opened it ends (`with database: ...`).

From Python or the command line a URL is still accepted: `StoreDatabase.from_url(url)` (or a
`SecretStr`, which the flows turn into a block) keeps the password out of a flow run's
stored parameters, where Prefect would keep a plain string as it was given.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BeforeValidator, Field, PrivateAttr, SecretStr, model_validator
from prefect.blocks.core import Block
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from scaling_core import store
from scaling_core.store.deadline import DEFAULT_TIMEOUT
from scaling_core.settings import StoreSettings

Driver = Literal["postgresql+psycopg", "sqlite"]


class StoreDatabase(Block):
    """The SQLModel store: a PostgreSQL database shared by workers, or a SQLite file.

    Example:
        >>> db = StoreDatabase.from_url("postgresql+psycopg://app:s3cret@db.internal:5432/jobs")
        >>> db.display_url()
        'postgresql+psycopg://app:***@db.internal:5432/jobs'
        >>> db.password
        SecretStr('**********')
    """

    _block_type_name: ClassVar[str] = "Batchpilot Store"
    _block_type_slug: ClassVar[str] = "batchpilot-store"
    _description: ClassVar[str] = (
        "The database where batchpilot keeps its runs, item ledger, batches and scaling decisions."
    )

    driver: Driver = Field(
        default="postgresql+psycopg", title="Driver", description="`postgresql+psycopg` (shared) or `sqlite` (one file)."
    )
    database: str = Field(
        min_length=1, title="Database", description="The database name, or the path of the SQLite file."
    )
    host: str | None = Field(default=None, title="Host", description="PostgreSQL host name or address.")
    port: int | None = Field(default=None, ge=1, le=65535, title="Port", description="PostgreSQL port (5432).")
    username: str | None = Field(default=None, title="Username")
    password: SecretStr | None = Field(default=None, title="Password", description="Kept secret by Prefect.")
    query: dict[str, str] = Field(
        default_factory=dict, title="Options", description="Extra URL options, e.g. sslmode=require."
    )
    timeout_seconds: float = Field(
        default=DEFAULT_TIMEOUT,
        gt=0,
        le=3600,
        title="Timeout Seconds",
        description="A call to the database that takes longer fails (connect, statement, lock wait, no answer).",
    )

    _engine: Engine | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_parts(self) -> Self:
        if self.driver == "sqlite":
            if self.host or self.port or self.username or self.password:
                raise ValueError("a SQLite store is a file: give only its path as `database`, no host or user")
        elif not self.host:
            raise ValueError("a PostgreSQL store needs a host")
        if secret_keys := [key for key in self.query if key.lower() in store.SECRET_QUERY_KEYS]:
            raise ValueError(f"put the password in the password field, not in the options ({', '.join(secret_keys)})")
        return self

    @classmethod
    def from_url(cls, url: str | SecretStr, *, timeout_seconds: float = DEFAULT_TIMEOUT) -> StoreDatabase:
        """A block from a SQLAlchemy URL; a `?password=` option becomes the secret password.

        Raises:
            ValueError: naming the URL (without its password) when it cannot be used.
        """
        parsed = store.parse_url(url.get_secret_value() if isinstance(url, SecretStr) else url)
        driver: Driver = "sqlite" if parsed.get_backend_name() == "sqlite" else "postgresql+psycopg"
        query = {key: str(value) for key, value in parsed.query.items()}
        password = parsed.password
        for key in [key for key in query if key.lower() in store.SECRET_QUERY_KEYS]:
            password = password or query[key]
            del query[key]
        return cls(
            driver=driver,
            database=parsed.database or ":memory:",
            host=parsed.host,
            port=parsed.port,
            username=parsed.username,
            password=SecretStr(str(password)) if password else None,
            query=query,
            timeout_seconds=timeout_seconds,
        )

    @classmethod
    def from_settings(cls, settings: StoreSettings | None = None) -> StoreDatabase:
        """The store named by `BATCHPILOT_DATABASE_URL`, else the embedded SQLite file."""
        return cls.from_url((settings or StoreSettings()).url())

    def _url(self) -> URL:
        return URL.create(
            self.driver,
            username=self.username,
            password=self.password.get_secret_value() if self.password else None,
            host=self.host,
            port=self.port,
            database=self.database,
            query=self.query,
        )

    def display_url(self) -> str:
        """The URL with its password replaced by `***`, for logs and errors."""
        return self._url().render_as_string(hide_password=True)

    def get_engine(self) -> Engine:
        """This block's engine (one connection pool), made and given its schema on first use."""
        if self._engine is None:
            engine = store.make_engine(self._url().render_as_string(hide_password=False), timeout=self.timeout_seconds)
            try:
                store.create_schema(engine)
            except BaseException:
                engine.dispose()
                raise
            self._engine = engine
        return self._engine

    def dispose(self) -> None:
        """Close the engine's pooled connections; the next `get_engine` makes a new one."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()

    @contextmanager
    def named_errors(self) -> Iterator[None]:
        """A SQLAlchemy error leaves the block as a `StoreError` naming this database (no password)."""
        try:
            yield
        except SQLAlchemyError as error:
            raise store.StoreError.wrap(self.display_url(), error) from error

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.dispose()


def _as_block(value: Any) -> Any:
    # A URL given from Python or the command line; a SecretStr stays masked in the stored
    # parameters, a plain string is stored by Prefect as it was given.
    if isinstance(value, SecretStr | str):
        return StoreDatabase.from_url(value)
    return value


DatabaseParameter = Annotated[StoreDatabase | None, BeforeValidator(_as_block)]
"""A flow parameter that takes the block (by name in the UI), or a URL from Python."""


def block_reference(name: str) -> dict[str, Any]:
    """A deployment parameter that names a saved `StoreDatabase` block (resolved when the run starts)."""
    return {"$ref": {"block_document_slug": f"{StoreDatabase.get_block_type_slug()}/{name}"}}
