"""Rate limits: the exception, the client-error adapter, the retry loop, the pacer and the AIMD limit."""

from __future__ import annotations

import pickle
import random
from datetime import UTC, datetime

import httpx
import pytest

from scaling_core import RateLimited, ScalingManager, rate_limited_from, translate_rate_limits
from scaling_core.rates import (
    ConcurrencyLimit,
    RateLimitExhausted,
    RatePacer,
    RateWaits,
    call_retrying_rate_limits,
    parse_retry_after,
)
from scaling_core.results import BatchResult, ConfidenceLevel

REQUEST = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")


def _status_error(status: int, headers: dict[str, str] | None = None) -> httpx.HTTPStatusError:
    response = httpx.Response(status, headers=headers, request=REQUEST)
    with pytest.raises(httpx.HTTPStatusError) as caught:
        response.raise_for_status()
    return caught.value


# -- the exception and the adapter ------------------------------------------------------------------


def test_rate_limited_keeps_its_wait_across_a_pickle() -> None:
    error = pickle.loads(pickle.dumps(RateLimited("slow down", retry_after=2.5)))
    assert isinstance(error, RateLimited)
    assert (str(error), error.retry_after) == ("slow down", 2.5)


def test_rate_limited_refuses_a_negative_wait() -> None:
    with pytest.raises(ValueError, match="retry_after"):
        RateLimited(retry_after=-1.0)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("7", 7.0), (" 1.5 ", 1.5), ("Wed, 02 Dec 2026 10:00:05 GMT", 5.0), ("Wed, 02 Dec 2026 09:59:00 GMT", 0.0),
     ("soon", None), (None, None), ("-3", 0.0), ("nan", None)],
)
def test_retry_after_reads_seconds_and_http_dates(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=datetime(2026, 12, 2, 10, 0, tzinfo=UTC)) == seconds


def test_an_httpx_429_maps_with_its_retry_after() -> None:
    mapped = rate_limited_from(_status_error(429, {"Retry-After": "3"}))
    assert isinstance(mapped, RateLimited) and mapped.retry_after == 3.0
    assert "HTTP 429" in str(mapped)


def test_an_httpx_429_without_a_header_or_with_openai_milliseconds() -> None:
    plain = rate_limited_from(_status_error(429))
    assert plain is not None and plain.retry_after is None
    milliseconds = rate_limited_from(_status_error(429, {"retry-after-ms": "250"}))
    assert milliseconds is not None and milliseconds.retry_after == 0.25


def test_other_errors_are_not_rate_limits() -> None:
    assert rate_limited_from(_status_error(500, {"Retry-After": "3"})) is None
    assert rate_limited_from(ValueError("429")) is None


def test_translate_rate_limits_reraises_a_429_and_lets_others_pass() -> None:
    with pytest.raises(RateLimited) as caught, translate_rate_limits():
        raise _status_error(429, {"Retry-After": "4"})
    assert caught.value.retry_after == 4.0
    assert isinstance(caught.value.__cause__, httpx.HTTPStatusError)
    with pytest.raises(httpx.HTTPStatusError), translate_rate_limits():
        raise _status_error(503)


def test_openai_rate_limit_error_maps_where_openai_is_installed() -> None:
    import openai  # a dev dependency only: the package maps it where a processor installed it

    response = httpx.Response(429, headers={"Retry-After": "2"}, request=REQUEST)
    error = openai.RateLimitError("Rate limit reached", response=response, body=None)
    mapped = rate_limited_from(error)
    assert mapped is not None and mapped.retry_after == 2.0


# -- the retry loop -----------------------------------------------------------------------------------


def test_retries_wait_the_providers_time_with_jitter_then_answer() -> None:
    answers: list[object] = [RateLimited(retry_after=2.0), _status_error(429), "done"]
    slept: list[float] = []

    def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return str(answer)

    rng = random.Random(7)
    expected_jitter = random.Random(7)
    answer, waits = call_retrying_rate_limits(call, rng=rng, sleep=slept.append)
    assert answer == "done"
    first = 2.0 * (1 + 0.2 * expected_jitter.random())
    second = 2.0 * (1 + 0.2 * expected_jitter.random())  # no Retry-After: backoff 2**(2-1) s
    assert slept == [first, second]
    assert waits == RateWaits(rate_limited_calls=2, waited=first + second)


def test_retries_give_up_with_one_clear_error_past_the_total_wait() -> None:
    slept: list[float] = []

    def call() -> str:
        raise RateLimited("quota", retry_after=30.0)

    with pytest.raises(RateLimitExhausted, match=r"3 calls in a row came back 429"):
        call_retrying_rate_limits(call, max_total_wait=70.0, rng=random.Random(0), sleep=slept.append)
    assert len(slept) == 2


def test_other_errors_are_not_retried() -> None:
    calls = 0

    def call() -> str:
        nonlocal calls
        calls += 1
        raise ValueError("broken")

    with pytest.raises(ValueError, match="broken"):
        call_retrying_rate_limits(call, sleep=lambda _: None)
    assert calls == 1


# -- the pacer ------------------------------------------------------------------------------------------


def _batch(items: int, ended_at: float, *, refused: int = 0) -> BatchResult:
    return BatchResult(
        batch_id=f"b{ended_at}",
        batch_size=items,
        total_items=items,
        successful_items=items,
        processing_time=1.0,
        confidence_distribution={ConfidenceLevel.HIGH: items},
        rate_limited_calls=refused,
        ended_at=ended_at,
    )


def test_no_429_means_no_ceiling_and_no_wait() -> None:
    history = [_batch(100, 10.0 * i) for i in range(1, 20)]
    assert RatePacer().ceiling(history) is None
    assert RatePacer().pacing(history, 100).wait_seconds == 0.0


def test_the_ceiling_is_what_was_admitted_in_the_minute_before_the_429() -> None:
    # 100 items every 10 s; the batch ending at t=60 met a 429: (0, 60] held six batches.
    history = [_batch(100, 10.0 * i, refused=int(i == 6)) for i in range(1, 7)]
    ceiling = RatePacer().ceiling(history)
    assert ceiling is not None and (ceiling.per_minute, ceiling.unit, ceiling.learned_at) == (600.0, "items", 60.0)


def test_the_wait_keeps_the_window_under_the_margin() -> None:
    history = [_batch(100, 10.0 * i, refused=int(i == 6)) for i in range(1, 7)]
    pacing = RatePacer().pacing(history, 100)
    # Budget 0.9 * 600 = 540: the window holds 600, so 100 more fit once the batches that
    # ended at 10 and 20 have left it (at 70 and 80): wait 80 - 60 = 20 s.
    assert pacing.wait_seconds == pytest.approx(20.0)
    assert "600 items per minute" in pacing.reason


def test_pacing_follows_the_window_exactly_in_steady_state() -> None:
    pacer = RatePacer()
    history = [_batch(100, 10.0 * i, refused=int(i == 6)) for i in range(1, 7)]
    waits = []
    clock = 60.0
    for _ in range(8):
        wait = pacer.pacing(history, 100).wait_seconds
        waits.append(round(wait, 6))
        clock += wait + 5.0  # each batch takes 5 s
        history.append(_batch(100, clock))
    # Five batches of 100 fit the 540 budget of a minute; the sixth waits for the first to leave.
    assert waits == [20.0, 5.0, 5.0, 5.0, 5.0, 20.0, 5.0, 5.0]
    ends = [batch.ended_at for batch in history[6:]]
    assert all(sum(1 for other in ends if end - 60.0 < other <= end) <= 5 for end in ends)


def test_a_later_429_lowers_the_ceiling() -> None:
    history = [_batch(100, 10.0 * i, refused=int(i == 6)) for i in range(1, 7)]
    history += [_batch(100, 90.0), _batch(100, 100.0, refused=1)]
    ceiling = RatePacer().ceiling(history)
    assert ceiling is not None and ceiling.per_minute == 400.0  # (40, 100] held the batches ending at 50, 60, 90, 100


def test_weight_is_paced_when_every_batch_carries_one() -> None:
    history = [
        _batch(100, 10.0 * i, refused=int(i == 6)).model_copy(update={"total_weight": 1000.0}) for i in range(1, 7)
    ]
    if getattr(history[0], "total_weight", None) is None:
        pytest.skip("BatchResult has no total_weight field in this version")
    ceiling = RatePacer().ceiling(history)
    assert ceiling is not None and (ceiling.per_minute, ceiling.unit) == (6000.0, "weight")


def test_the_manager_puts_the_wait_in_its_decision_and_reason() -> None:
    history = [_batch(100, 10.0 * i, refused=int(i == 6)) for i in range(1, 7)]
    decision = ScalingManager().evaluate_scaling(history)
    assert decision.wait_seconds > 0.0
    assert "pacing" in decision.reason and "rate limit" in decision.reason
    assert decision.performance_metrics["rate_ceiling_per_minute"] == 600.0
    calm = ScalingManager().evaluate_scaling([_batch(100, 10.0 * i) for i in range(1, 7)])
    assert calm.wait_seconds == 0.0 and "pacing" not in calm.reason


# -- AIMD -------------------------------------------------------------------------------------------------


def test_aimd_halves_on_a_429_and_grows_by_one_after_a_clean_window() -> None:
    limit = ConcurrencyLimit(8)
    rounds = [(8, 2), (4, 0), (4, 0), (4, 0), (4, 0), (4, 0), (4, 0), (4, 0), (4, 0), (4, 0), (4, 1), (2, 0)]
    sequence = [limit.record(calls=calls, rate_limited=refused) for calls, refused in rounds]
    # 8 -> 4 on the 429; 4 -> 5 after 16 clean calls (WINDOW 4 x limit 4); 5 -> 6 after 20
    # more; the next 429 halves 6 to 3.
    assert sequence == [4, 4, 4, 4, 5, 5, 5, 5, 5, 6, 3, 3]


def test_aimd_stays_within_one_and_the_parallelism() -> None:
    limit = ConcurrencyLimit(3, initial=1)
    assert [limit.record(calls=1, rate_limited=1) for _ in range(3)] == [1, 1, 1]
    grown = [limit.record(calls=20, rate_limited=0) for _ in range(4)]
    assert grown == [2, 3, 3, 3]
    with pytest.raises(ValueError, match="maximum"):
        ConcurrencyLimit(0)
    with pytest.raises(ValueError, match="initial"):
        ConcurrencyLimit(2, initial=3)
