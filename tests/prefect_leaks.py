"""A guard shared by the tests that run flows in the test process."""

from __future__ import annotations

import gc
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def tolerating_prefect_socket_leak(api_url: str | None = None) -> Iterator[None]:
    """Run flows in this process without failing on the socket Prefect 3.9.1 leaves open.

    At the start of every flow run `prefect.results._read_server_default_result_storage_block_id`
    makes a `get_client(sync_client=True)` outside a `with` block, so its connection to the
    API is never closed and `ResourceWarning: unclosed <socket.socket ...>` fires when the
    garbage collector frees it, often during a later test. Only unclosed sockets to this API's
    port (`api_url`, by default the current `PREFECT_API_URL`) are ignored, and they are
    collected here, so that none is left to fail a later test.
    """
    if api_url is None:
        from prefect.settings import PREFECT_API_URL

        api_url = str(PREFECT_API_URL.value())
    port = re.escape(api_url.rsplit(":", 1)[-1].split("/", 1)[0])
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=rf"unclosed <socket\.socket .*raddr=\('127\.0\.0\.1', {port}\)>",
            category=ResourceWarning,
        )
        try:
            yield
        finally:
            gc.collect()
