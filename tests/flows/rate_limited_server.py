"""A local OpenAI-style HTTP endpoint with a tokens-per-window limit, and a processor that calls it.

`RateLimitedServer` answers `POST /v1/chat/completions` on 127.0.0.1 with one label per
item, and with 429 (`Retry-After`, `retry-after-ms`) when the tokens of the request would
take the last `window` seconds over `limit` tokens (a sliding window, as providers count).
`label_items` is the processor: it sends its items through httpx and raises rate limits
through `translate_rate_limits`.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from scaling_core import translate_rate_limits

TOKENS_PER_ITEM = 10
"""Tokens one item costs the endpoint (a short prompt and answer)."""

server_url: str | None = None
"""The base URL `label_items` calls; the test sets it to its server's."""


@dataclass
class CallLog:
    """What the endpoint answered, in order: (monotonic time, status, items)."""

    calls: list[tuple[float, int, int]] = field(default_factory=list)

    def statuses(self) -> list[int]:
        return [status for _, status, _ in self.calls]


class RateLimitedServer:
    """A threaded HTTP server on 127.0.0.1 (a free port) with a sliding-window token limit."""

    def __init__(self, *, limit: int, window: float, call_seconds: float = 0.02) -> None:
        self.limit = limit
        self.window = window
        self.call_seconds = call_seconds
        self.log = CallLog()
        self._admitted: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, name="rate-limited-server", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> RateLimitedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def admit(self, tokens: int) -> float | None:
        """Admit `tokens` now, or say how many seconds until the window has room for them."""
        with self._lock:
            now = time.monotonic()
            while self._admitted and self._admitted[0][0] <= now - self.window:
                self._admitted.popleft()
            held = sum(count for _, count in self._admitted)
            if held + tokens <= self.limit:
                self._admitted.append((now, tokens))
                return None
            # Room comes when enough of the oldest admissions leave the window.
            for at, count in self._admitted:
                held -= count
                if held + tokens <= self.limit:
                    return max(0.0, at + self.window - now)
            return self.window

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                items = body["messages"][-1]["content"].split("\n")
                wait = server.admit(TOKENS_PER_ITEM * len(items))
                server.log.calls.append((time.monotonic(), 200 if wait is None else 429, len(items)))
                if wait is not None:
                    self._send(
                        429,
                        {"error": {"type": "rate_limit_exceeded", "message": "tokens per minute reached"}},
                        {"Retry-After": str(math.ceil(wait)), "retry-after-ms": str(math.ceil(wait * 1000))},
                    )
                    return
                time.sleep(server.call_seconds)
                labels = [line.upper() for line in items]
                content = json.dumps(labels)
                self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}, {})

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
                pass  # the test reads `CallLog`, not stderr

        return Handler


def label_items(items: list[Any]) -> list[dict[str, Any]]:
    """The processor: one chat completion per batch, one label per item, through httpx."""
    assert server_url is not None, "set tests.flows.rate_limited_server.server_url first"
    prompt = "\n".join(str(item.payload["name"]) for item in items)
    with httpx.Client(base_url=server_url, timeout=10.0) as client, translate_rate_limits():
        response = client.post(
            "/v1/chat/completions",
            json={"model": "local", "messages": [{"role": "user", "content": prompt}]},
        )
        response.raise_for_status()
    labels = json.loads(response.json()["choices"][0]["message"]["content"])
    return [
        {"item_id": item.id, "success": True, "confidence": 0.95, "output": {"label": label}}
        for item, label in zip(items, labels)
    ]
