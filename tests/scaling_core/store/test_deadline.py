"""Every PostgreSQL call is bounded: a server that stops answering fails the call, never hangs it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from scaling_core import store
from scaling_core.store.deadline import DatabaseTimeout, postgres_connect_args
from tests.flows.fault_support import TcpProxy

pytestmark = pytest.mark.postgres

TIMEOUT = 1.0


@pytest.fixture
def frozen_later(postgres_url: str) -> Iterator[tuple[TcpProxy, Engine]]:
    """An engine with a 1 s bound that reaches PostgreSQL through a proxy the test can freeze."""
    parsed = make_url(postgres_url)
    with TcpProxy(parsed.host or "127.0.0.1", parsed.port or 5432) as proxy:
        engine = store.make_engine(
            parsed.set(port=proxy.port).render_as_string(hide_password=False), timeout=TIMEOUT
        )
        yield proxy, engine
        proxy.thaw()
        engine.dispose()


def test_the_server_bounds_statements_and_lock_waits(postgres_url: str) -> None:
    engine = store.make_engine(postgres_url, timeout=TIMEOUT)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SHOW statement_timeout")).scalar() == "1s"
            assert connection.execute(text("SHOW lock_timeout")).scalar() == "1s"
            with pytest.raises(OperationalError, match="statement timeout"):
                connection.execute(text("SELECT pg_sleep(5)"))
    finally:
        engine.dispose()


def test_a_statement_without_an_answer_fails_within_its_deadline(frozen_later: tuple[TcpProxy, Engine]) -> None:
    proxy, engine = frozen_later
    with engine.connect() as connection:
        assert connection.execute(text("SELECT 1")).scalar() == 1
        proxy.freeze()
        started = time.monotonic()
        with pytest.raises(DatabaseTimeout, match=r"no answer within 1\.25 s"):
            connection.execute(text("SELECT 2"))
        assert time.monotonic() - started < 5 * TIMEOUT


def test_a_pooled_connection_and_a_new_one_fail_within_their_bounds_and_recover(
    frozen_later: tuple[TcpProxy, Engine],
) -> None:
    proxy, engine = frozen_later
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    proxy.freeze()
    started = time.monotonic()
    with pytest.raises(OperationalError, match="timeout"):
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    # The pooled connection's ping gives up after its deadline, a new connection after its own.
    assert time.monotonic() - started < 10 * TIMEOUT
    proxy.thaw()
    proxy.stop()
    proxy.start()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT 3")).scalar() == 3


def test_options_the_url_sets_are_left_to_it() -> None:
    args = postgres_connect_args(30.0, {"connect_timeout": "5"})
    assert "connect_timeout" not in args
    assert args["options"] == "-c statement_timeout=30000 -c lock_timeout=30000"
    assert args["tcp_user_timeout"] == 30000
    assert args["keepalives_idle"] + args["keepalives_count"] * args["keepalives_interval"] <= 30
