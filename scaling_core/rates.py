"""Rate limits: a call that came back "too many requests", and how a run learns to stay under it.

A provider's rate limit (tokens or requests per minute) is not a property of the batch size:
a rate-limited call failed because calls came too fast, not because the batch was too big.
This module holds the parts that deal with it, all plain Python:

- `RateLimited`, the exception a processor raises for such a call (with the provider's
  `retry_after` when it gave one), and `translate_rate_limits` / `rate_limited_from`, which
  turn the common client errors into it (an HTTP 429 from httpx; `openai.RateLimitError`
  where the `openai` package is installed);
- `call_retrying_rate_limits`, which waits (the provider's `retry_after`, or an exponential
  backoff, with jitter) and calls again with the same items, a bounded number of times;
- `RatePacer`, which learns the ceiling in items (or weight) per minute from the batches that
  met a 429, and says how long to wait before the next batch to stay under it;
- `ConcurrencyLimit`, an AIMD limit on the calls in flight (Netflix concurrency-limits'
  `AIMDLimit`).

Example, a processor that calls an HTTP API through httpx:

    def label(items):
        with translate_rate_limits():
            response = client.post("/v1/chat/completions", json=...)
            response.raise_for_status()
        return [...]
"""

from __future__ import annotations

import contextlib
import email.utils
import itertools
import math
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, TypeVar

from scaling_core.results import BatchResult

__all__ = [
    "ConcurrencyLimit",
    "Pacing",
    "RateCeiling",
    "RateLimitExhausted",
    "RateLimited",
    "RatePacer",
    "RateWaits",
    "backoff",
    "call_retrying_rate_limits",
    "parse_retry_after",
    "rate_limited_from",
    "translate_rate_limits",
]


class RateLimited(Exception):
    """A call the provider refused for its rate limit (an HTTP 429): retry the same items later.

    Args:
        message: what the provider said.
        retry_after: seconds the provider asked to wait before the next call, when it said.

    Example:
        >>> raise RateLimited("60000 tokens per minute reached", retry_after=2.0)
    """

    def __init__(self, message: str = "rate limited", *, retry_after: float | None = None) -> None:
        if retry_after is not None and (math.isnan(retry_after) or retry_after < 0):
            raise ValueError(f"retry_after must be a non-negative number of seconds, got {retry_after!r}")
        super().__init__(message)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        # Crosses a process boundary (an isolated processor, a Dask worker) with its wait.
        return (_rebuild_rate_limited, (str(self), self.retry_after))


def _rebuild_rate_limited(message: str, retry_after: float | None) -> RateLimited:
    return RateLimited(message, retry_after=retry_after)


class RateLimitExhausted(RuntimeError):
    """Rate-limited calls kept coming back for longer than the allowed total wait."""


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from an HTTP `Retry-After` value: delay-seconds or an HTTP-date (RFC 9110).

    None when the value is missing or unreadable; a date in the past gives 0.

    Example:
        >>> parse_retry_after("7")
        7.0
        >>> parse_retry_after("Wed, 02 Dec 2026 10:00:05 GMT", now=datetime(2026, 12, 2, 10, 0, tzinfo=UTC))
        5.0
    """
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def _retry_after_of(headers: Any) -> float | None:
    """The wait a response's headers ask for: OpenAI's `retry-after-ms` (finer), else `Retry-After`."""
    if headers is None:
        return None
    milliseconds = parse_retry_after(headers.get("retry-after-ms"))
    if milliseconds is not None:
        return milliseconds / 1000.0
    return parse_retry_after(headers.get("retry-after"))


def rate_limited_from(error: BaseException) -> RateLimited | None:
    """`error` as a `RateLimited` when it is a rate-limited call, else None.

    Maps a `RateLimited` (itself), an `httpx.HTTPStatusError` whose response is a 429, and
    the `openai` SDK's `RateLimitError` (where the processor uses `openai`: nothing is
    imported here). `retry_after` comes from the response's `Retry-After` header
    (seconds or an HTTP-date) or OpenAI's `retry-after-ms`.

    Example:
        >>> response = httpx.Response(429, headers={"Retry-After": "3"}, request=request)
        >>> rate_limited_from(httpx.HTTPStatusError("429", request=request, response=response)).retry_after
        3.0
    """
    if isinstance(error, RateLimited):
        return error
    httpx = _loaded("httpx")
    if httpx is not None and isinstance(error, httpx.HTTPStatusError):
        response = error.response
        if response.status_code != 429:
            return None
        return RateLimited(f"HTTP 429 from {error.request.url}", retry_after=_retry_after_of(response.headers))
    openai = _loaded("openai")
    if openai is not None and isinstance(error, getattr(openai, "RateLimitError", ())):
        response = getattr(error, "response", None)
        headers = getattr(response, "headers", None)
        return RateLimited(f"openai.RateLimitError: {error}", retry_after=_retry_after_of(headers))
    return None


def _loaded(name: str) -> Any:
    """The module `name` when this process has imported it, else None.

    A client that raised the error was imported by the processor: nothing is imported here,
    so an installed but unused `openai` costs nothing.
    """
    return sys.modules.get(name)


@contextlib.contextmanager
def translate_rate_limits() -> Iterator[None]:
    """Re-raise a rate-limited client error from the block as `RateLimited` (see `rate_limited_from`).

    Other errors pass unchanged. Works around sync and async code alike.

    Example:
        >>> with translate_rate_limits():
        ...     client.post(url, json=body).raise_for_status()
    """
    try:
        yield
    except RateLimited:
        raise
    except Exception as error:
        mapped = rate_limited_from(error)
        if mapped is None:
            raise
        raise mapped from error


# -- waiting and retrying ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateWaits:
    """What the rate limit cost one call: the calls that came back 429, and the seconds waited."""

    rate_limited_calls: int = 0
    waited: float = 0.0


_T = TypeVar("_T")

FIRST_BACKOFF = 1.0
"""Seconds before the first retry when the provider gave no `Retry-After`."""
MAX_BACKOFF = 60.0
"""The backoff stops doubling here: limits are stated per minute, so a minute frees any of them."""
JITTER = 0.2
"""Each wait is lengthened by a random share up to this: chunks refused together must not
return together (never shortened: the provider said not before `retry_after`)."""
MAX_TOTAL_WAIT = 600.0
"""Seconds of rate-limit waits after which one call gives up: ten per-minute windows that
all refused the same items mean the items do not fit the limit (or another client uses it all)."""


def backoff(attempt: int, retry_after: float | None) -> float:
    """The wait before retry `attempt` (1, 2, ...) without jitter: `retry_after`, else
    min(MAX_BACKOFF, FIRST_BACKOFF * 2**(attempt - 1))."""
    if retry_after is not None:
        return retry_after
    return min(MAX_BACKOFF, FIRST_BACKOFF * 2.0 ** (attempt - 1))


def call_retrying_rate_limits(
    call: Callable[[], _T],
    *,
    on_wait: Callable[[RateLimited, float], None] | None = None,
    max_total_wait: float = MAX_TOTAL_WAIT,
    rng: random.Random | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[_T, RateWaits]:
    """`call()`, called again with the same items after each `RateLimited` it raises.

    Waits `backoff(attempt, retry_after) * (1 + JITTER * U)`, U uniform in [0, 1), before each
    new call. Other exceptions propagate at once. Returns the answer and what the waits cost.

    Args:
        call: the call to make; it raises `RateLimited` (or an error `rate_limited_from` maps).
        on_wait: told the error and the wait before each wait (a log line).
        max_total_wait: seconds of waiting allowed in all; beyond, `RateLimitExhausted`.
        rng: the jitter's randomness (seeded in tests).
        sleep: how to wait (a fake clock in tests).

    Raises:
        RateLimitExhausted: naming the calls refused and the seconds waited.
    """
    rng = rng if rng is not None else random.Random()
    refused = 0
    waited = 0.0
    while True:
        try:
            return call(), RateWaits(rate_limited_calls=refused, waited=waited)
        except Exception as error:
            limited = rate_limited_from(error)
            if limited is None:
                raise
            refused += 1
            wait = backoff(refused, limited.retry_after) * (1.0 + JITTER * rng.random())
            if waited + wait > max_total_wait:
                raise RateLimitExhausted(
                    f"rate limited: {refused} calls in a row came back 429 over {waited:.0f} s of waiting "
                    f"(the most allowed is {max_total_wait:g} s); last: {limited}"
                ) from error
            if on_wait is not None:
                on_wait(limited, wait)
            sleep(wait)
            waited += wait


# -- learning the ceiling ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateCeiling:
    """A learned rate limit: `per_minute` items (or weight, when `unit` is "weight")."""

    per_minute: float
    unit: str
    """"items" or "weight"."""
    learned_at: float
    """When the call of the batch that met the 429 was admitted at last."""


@dataclass(frozen=True, slots=True)
class Pacing:
    """How long to wait before the next batch, and why (empty when no ceiling is known).

    `max_size`: the largest batch that keeps to `RatePacer.BATCHES_PER_PERIOD`, when a
    ceiling is known.
    """

    wait_seconds: float = 0.0
    reason: str = ""
    ceiling: RateCeiling | None = None
    max_size: int | None = None


class RatePacer:
    """Learns a provider's rate ceiling from the batch history and paces the next batch under it.

    Each batch carries the calls of it that came back 429 (`rate_limited_calls`), when it
    ended (`ended_at`, seconds on the clock the pipeline records), its items and, when the
    batches carry one, its weight (`total_weight`, e.g. tokens). A provider counts a call when
    it admits it, which is taken as ``a_j = ended_at_j - processing_time_j`` (the batch's time
    leaves the waits out). Limits are stated per period (a minute, `PERIOD`, unless
    `ScalingConfig.rate_limit_period_seconds` says otherwise), so the pacer reasons over a
    sliding window of that many seconds, P:

    - Ceiling. A batch of amount x that met a 429 was first refused at ``r = a - rate_wait``,
      when the provider held ``W(r) = sum(amount_j : a_j in (r - P, r])`` (the batches before
      it): so ``limit < W(r) + x``. Each 429 bounds the limit from above; the ceiling is the
      least of these bounds in the history, ``C = min over 429s of (W(r) + x)``. Pacing at
      ``(1 - MARGIN) C`` either stays under the limit or meets a 429 whose bound is at most
      ``(1 - MARGIN) C``: the estimate falls geometrically onto the limit (a multiplicative
      decrease) and then holds. A 429 whose window reaches before the history handed in is
      not read (its count would be short).
    - Wait. The next batch of amount x may start at the earliest time s >= now at which the
      window ending at s holds at most ``B - x``, with ``B = (1 - MARGIN) * C``:
      ``s = min { s >= now : sum(amount_j : a_j > s - (1 + EDGE) P) + x <= B }``; the wait is
      s - now (W(r) above also counts over (1 + EDGE) P).
      A batch larger than B alone waits for an empty window.
    - Size. A window admits whole batches, so a batch is kept to ``B / k`` for a whole k, at
      most `BATCHES_PER_PERIOD`, and as large as the call's own fixed cost and the time between
      stages need to keep up with B (`_max_size`).

    The amount is the batches' weight when every batch in the window has one, else items.
    The pacer never raises the ceiling on its own: it learns only from 429s, and forgets a
    ceiling once its 429 has left the history.

    Example:
        >>> RatePacer().pacing(history, next_size=50).wait_seconds
        3.4
    """

    PERIOD = 60.0
    """Seconds of the window by default: providers state their limits per minute."""
    BATCHES_PER_PERIOD = 40
    """A batch holds at most 1/40 of the period's budget, and a whole number of batches fills
    it: a sliding window admits whole batches, so what a batch does not fit is lost..."""
    OWN_RATE_SLACK = 1.1
    """...but never so few items that the call itself, at its fixed cost, could not keep up
    with the budget: a batch stays at least this many times the size whose own rate is the
    budget's (10 % for the timing noise), from a fit of time = a + b * items."""
    EDGE = 0.01
    """A call counts in a window 1 % of the period longer than its estimated admission says:
    the estimate misses refused calls' round trips and the provider's own clock, and a batch
    counted on the wrong side of an edge would make a 429's bound too low."""
    FIT_BATCHES = 50
    """Recent batches the own-rate floor's time fit reads: more than a window's worth, so that
    the sizes spread (the manager's probes) and the fixed cost can be told from the per-item one."""
    MARGIN = 0.02
    """Pace at 98 % of the learned ceiling: admission times are estimated from the batch's
    end and time, so a call's count can fall on the wrong side of a window's edge; a 429
    that this lets through costs one refused call and lowers the estimate."""

    def __init__(self, period: float | None = None) -> None:
        if period is not None and not period > 0:
            raise ValueError(f"period must be a positive number of seconds, got {period!r}")
        self.period = period if period is not None else self.PERIOD

    def ceiling(self, batches: Sequence[BatchResult], *, whole: bool = True) -> RateCeiling | None:
        """The ceiling: the least amount a 429 in `batches` refused, or None when none did.

        `whole`: `batches` is the whole history (nothing before it was cut off), so a window
        that reaches before its first batch is complete all the same.
        """
        best: RateCeiling | None = None
        refused = list(itertools.compress(range(len(batches)), map(attrgetter("rate_limited_calls"), batches)))
        if not refused:
            return None  # no 429 yet: nothing to learn (the common case, read on every decision)
        first = _admitted(batches[0])
        for index in refused:
            batch = batches[index]
            at = _admitted(batch)
            if at is None:
                continue
            refused_at = at - batch.rate_wait
            if not whole and (first is None or first > refused_at - self.period):
                continue  # the window before this 429 is cut off: its count would be short
            unit, amounts = self._amounts([*self._window(batches[:index], refused_at, edge=self.EDGE), batch])
            per_minute = sum(amounts) * 60.0 / self.period
            if best is None or unit != best.unit or per_minute <= best.per_minute:
                best = RateCeiling(per_minute=per_minute, unit=unit, learned_at=at)
        return best

    def pacing(
        self, batches: Sequence[BatchResult], next_size: int, *, now: float | None = None, whole: bool = True
    ) -> Pacing:
        """The wait before a batch of `next_size` items, given `batches` (oldest first).

        `now` defaults to the last batch's `ended_at` (the decision is taken as it ends);
        `whole` as in `ceiling`.
        """
        if next_size < 1:
            raise ValueError(f"next_size must be positive, got {next_size}")
        ceiling = self.ceiling(batches, whole=whole)
        if ceiling is None or not batches:
            return Pacing()
        start = now if now is not None else batches[-1].ended_at
        if start is None:
            return Pacing(ceiling=ceiling)
        window = self._window(batches, start, edge=self.EDGE)
        unit, amounts = self._amounts(window)
        if unit != ceiling.unit:
            return Pacing(ceiling=ceiling)  # the history changed units: nothing comparable to pace by
        items = sum(batch.total_items for batch in window)
        per_item = sum(amounts) / items if unit == "weight" and items else 1.0
        budget = (1.0 - self.MARGIN) * ceiling.per_minute * self.period / 60.0
        max_size = self._max_size(batches[-self.FIT_BATCHES :], budget, per_item)
        next_size = min(next_size, max_size) if max_size is not None else next_size
        wanted = per_item * next_size
        held = sum(amounts)
        wait = 0.0
        # Oldest first: the window frees each batch's amount P seconds after its admission.
        for batch, amount in zip(window, amounts):
            if held + wanted <= budget:
                break
            held -= amount
            wait = max(wait, _admitted(batch) + (1.0 + self.EDGE) * self.period - start)  # type: ignore[operator]
        if wait <= 0.0:
            return Pacing(ceiling=ceiling, max_size=max_size)
        reason = (
            f"pacing {wait:.1f} s under the learned rate limit of {ceiling.per_minute:,.0f} {ceiling.unit} per minute "
            f"(kept at {1 - self.MARGIN:.0%})"
        )
        return Pacing(wait_seconds=wait, reason=reason, ceiling=ceiling, max_size=max_size)

    def _max_size(self, recent: Sequence[BatchResult], budget: float, per_item: float) -> int | None:
        """The largest next batch: B / k for a whole number k of batches a window holds.

        ``k = min(BATCHES_PER_PERIOD, floor(B / n_floor))``, so that k batches fill the budget
        exactly, where ``n_floor = OWN_RATE_SLACK * (a + g) * R / (1 - b * R)`` is the size whose
        own rate keeps up with it: time = a + b * items fitted on the recent batches, g the
        shortest gap between one batch's end and the next one's call (the pipeline's own time
        between stages; a longer gap holds a pacing wait too), R = B / P.
        """
        if per_item <= 0:
            return None
        items = budget / per_item
        fit = _time_fit([(batch.total_items, batch.processing_time) for batch in recent if not batch.is_whole_failure])
        floor = 1.0
        if fit is not None:
            fixed, per_item_s = fit
            rate = items / self.period  # items per second the budget allows
            # n / (a + g + b n) >= rate  <=>  n >= (a + g) * rate / (1 - b * rate), when b * rate < 1.
            if per_item_s * rate >= 1.0:
                return None  # the call cannot outrun the budget at any size: no cap
            gaps = [
                later.ended_at - later.processing_time - earlier.ended_at
                for earlier, later in itertools.pairwise(recent)
                if earlier.ended_at is not None and later.ended_at is not None
            ]
            gap = max(0.0, min(gaps)) if gaps else 0.0  # the shortest: a paced gap holds a wait too
            floor = max(floor, self.OWN_RATE_SLACK * (fixed + gap) * rate / (1.0 - per_item_s * rate))
        batches = max(1, min(self.BATCHES_PER_PERIOD, math.floor(items / floor)))
        return max(1, math.floor(items / batches))

    def _window(self, batches: Sequence[BatchResult], end: float, *, edge: float = 0.0) -> list[BatchResult]:
        """The batches admitted in (end - (1 + edge) * period, end], oldest first."""
        window: list[BatchResult] = []
        for batch in reversed(batches):
            at = _admitted(batch)
            if at is None:
                continue
            if at <= end - (1.0 + edge) * self.period:
                break
            if at <= end:
                window.append(batch)
        window.reverse()
        return window

    @staticmethod
    def _amounts(window: Sequence[BatchResult]) -> tuple[str, list[float]]:
        weights = [getattr(batch, "total_weight", None) for batch in window]
        if window and all(weight is not None for weight in weights):
            return "weight", [float(weight) for weight in weights]  # type: ignore[arg-type]
        return "items", [float(batch.total_items) for batch in window]


def _admitted(batch: BatchResult) -> float | None:
    """When the provider admitted the batch's call: its end less its time (waits are not in it)."""
    return batch.ended_at - batch.processing_time if batch.ended_at is not None else None


def _time_fit(points: Sequence[tuple[int, float]]) -> tuple[float, float] | None:
    """(a, b) of time = a + b * items by least squares, a and b kept >= 0; None without points.

    With one size only, the fixed part cannot be told apart: a = 0, b = time per item.
    """
    points = [(items, seconds) for items, seconds in points if items > 0]
    if not points:
        return None
    count = len(points)
    mean_n = sum(items for items, _ in points) / count
    mean_t = sum(seconds for _, seconds in points) / count
    spread = sum((items - mean_n) ** 2 for items, _ in points)
    if spread > 0:
        b = sum((items - mean_n) * (seconds - mean_t) for items, seconds in points) / spread
        a = mean_t - b * mean_n
        if a >= 0 and b >= 0:
            return a, b
    return 0.0, mean_t / mean_n


class ConcurrencyLimit:
    """An AIMD limit on the calls in flight, as Netflix concurrency-limits' `AIMDLimit`.

    After each round of calls (a stage's chunks):

        if any call came back 429:  limit = max(1, floor(limit * BACKOFF))
        else:                       clean += calls
                                    if clean >= WINDOW * limit: limit = min(maximum, limit + 1); clean = 0

    A 429 also restarts the count of clean calls. The limit starts at `maximum` (the
    configured parallelism) unless told otherwise.

    Example:
        >>> limit = ConcurrencyLimit(8)
        >>> limit.record(calls=8, rate_limited=2)
        4
    """

    BACKOFF = 0.5
    """Halve on a 429, as TCP does on a loss: the rate was over the ceiling at this limit."""
    WINDOW = 4
    """Rounds of clean calls at the limit before it grows by one: a few windows' worth of
    evidence that the provider takes this many calls at once."""

    def __init__(self, maximum: int, *, initial: int | None = None) -> None:
        if maximum < 1:
            raise ValueError(f"maximum must be at least 1, got {maximum}")
        start = maximum if initial is None else initial
        if not 1 <= start <= maximum:
            raise ValueError(f"initial must lie in [1, {maximum}], got {initial}")
        self.maximum = maximum
        self.limit = start
        self._clean = 0

    def record(self, *, calls: int, rate_limited: int) -> int:
        """Learn from a round of `calls` calls of which `rate_limited` came back 429; the new limit."""
        if calls < 0 or rate_limited < 0:
            raise ValueError(f"calls and rate_limited must not be negative, got {calls} and {rate_limited}")
        if rate_limited:
            self.limit = max(1, math.floor(self.limit * self.BACKOFF))
            self._clean = 0
            return self.limit
        self._clean += calls
        if self._clean >= self.WINDOW * self.limit:
            self.limit = min(self.maximum, self.limit + 1)
            self._clean = 0
        return self.limit
