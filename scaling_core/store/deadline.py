"""Time bounds on every PostgreSQL call, so that a frozen network or server fails a call, never hangs it.

Three layers, for three ways a database goes quiet:

- libpq's own bounds: `connect_timeout` for the whole connection set-up, TCP keepalives
  and `tcp_user_timeout` for a network path that drops packets (the kernel gives up on the
  connection);
- the server's: `statement_timeout` and `lock_timeout`, for a statement that runs or waits
  too long on a healthy connection;
- the client's deadline: a statement whose answer does not come within the bound (a server
  or proxy that stopped answering while keeping the connection open, which no TCP timer
  sees) has its socket shut down, so the waiting call fails at once with `DatabaseTimeout`
  and the pool drops the connection.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DisconnectionError, SQLAlchemyError

DEFAULT_TIMEOUT = 30.0
"""Seconds a database call may take before it fails (connect, statement, lock wait)."""

DEADLINE_MARGIN = 1.25
"""The client's deadline is this many times the server's statement timeout, so that a server
that can still answer reports the timeout itself (its message is the clearer one)."""

KEEPALIVE_PROBES = 3
"""Unanswered keepalive probes before the kernel drops a connection."""

_CUT = "batchpilot_deadline_cut"
_TIMER = "batchpilot_deadline_timer"


class DatabaseTimeout(SQLAlchemyError):
    """A database call got no answer within its bound; its connection was dropped."""


def postgres_connect_args(timeout: float, given: dict[str, Any]) -> dict[str, Any]:
    """libpq options that bound connect, idle and unacknowledged time by `timeout` seconds.

    Options the URL already sets (`given`) are left to it.
    """
    seconds = max(1, round(timeout))
    milliseconds = max(1, round(timeout * 1000))
    # Keepalives: idle, then probes at an interval, all within the bound.
    interval = max(1, seconds // (2 * KEEPALIVE_PROBES))
    defaults: dict[str, Any] = {
        "connect_timeout": seconds,
        "keepalives": 1,
        "keepalives_idle": max(1, seconds - KEEPALIVE_PROBES * interval),
        "keepalives_interval": interval,
        "keepalives_count": KEEPALIVE_PROBES,
        "tcp_user_timeout": milliseconds,
        "options": f"-c statement_timeout={milliseconds} -c lock_timeout={milliseconds}",
    }
    return {name: value for name, value in defaults.items() if name not in given}


def add_client_deadline(engine: Engine, timeout: float) -> None:
    """Shut a connection's socket down when a statement on it outlives `timeout` x the margin.

    Also pings every connection taken from the pool under the same deadline (SQLAlchemy's
    own `pool_pre_ping` runs outside the statement events, so nothing would bound it): a
    connection that does not answer is dropped and another one is tried.
    """
    seconds = timeout * DEADLINE_MARGIN

    @event.listens_for(engine, "checkout")
    def _ping(raw: Any, record: Any, proxy: Any) -> None:
        info: dict[str, Any] = {}
        timer = threading.Timer(seconds, _cut, args=(raw, info))
        timer.daemon = True
        timer.start()
        try:
            cursor = raw.cursor()
            try:
                cursor.execute("SELECT 1")
            finally:
                cursor.close()
            raw.rollback()  # the ping must not leave the connection in a transaction
        except Exception as error:
            # The pool drops this connection and checks out another (up to three tries).
            raise DisconnectionError(f"the connection did not answer a ping: {error}") from error
        finally:
            timer.cancel()

    @event.listens_for(engine, "before_cursor_execute")
    def _arm(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        raw = conn.connection.dbapi_connection
        timer = threading.Timer(seconds, _cut, args=(raw, conn.info))
        timer.daemon = True
        conn.info[_TIMER] = timer
        timer.start()

    @event.listens_for(engine, "after_cursor_execute")
    def _disarm(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        _cancel(conn.info)

    @event.listens_for(engine, "handle_error")
    def _name_the_timeout(context: ExceptionContext) -> None:
        info = context.connection.info if context.connection is not None else {}
        _cancel(info)
        if info.pop(_CUT, False):
            context.is_disconnect = True
            raise DatabaseTimeout(f"no answer within {seconds:g} s; the connection was dropped") from (
                context.original_exception
            )


def _cancel(info: dict[str, Any]) -> None:
    timer = info.pop(_TIMER, None)
    if timer is not None:
        timer.cancel()


def _cut(raw_connection: Any, info: dict[str, Any]) -> None:
    # Shut the socket down through a duplicate of its descriptor: the call waiting on it sees
    # the connection end and fails, while the descriptor itself stays psycopg's to close.
    try:
        descriptor = raw_connection.pgconn.socket
        duplicate = socket.socket(fileno=os.dup(descriptor))
    except Exception:  # the connection is already closed: nothing waits on it
        return
    info[_CUT] = True
    try:
        duplicate.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        duplicate.close()
