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
    RateCeiling,
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


def test_the_ceiling_is_what_the_window_held_when_the_429_came_plus_the_refused_batch() -> None:
    # 100 items every 10 s, each admitted 1 s before it ended (processing_time 1 s); the batch
    # admitted at 59 was refused there: the window (59 - 60.6, 59] held 500, and 100 more did not fit.
    history = [_batch(100, 10.0 * i, refused=int(i == 6)) for i in range(1, 7)]
    ceiling = RatePacer().ceiling(history)
    assert ceiling is not None and (ceiling.per_minute, ceiling.unit, ceiling.learned_at) == (600.0, "items", 59.0)


def test_the_wait_keeps_the_window_under_the_margin_and_the_batch_small() -> None:
    history = [_batch(100, 10.0 * i, refused=int(i == 6)) for i in range(1, 7)]
    pacing = RatePacer().pacing(history, 100)
    # Budget 0.98 * 600 = 588 (9.8 items/s). Calls start 9 s after the batch before ended, so a
    # batch keeps up from 1.1 * 9 * 9.8 / (1 - 0.098) = 108 items: 5 batches of 117 fill the
    # budget. The window holds 600; 117 more fit once the batches admitted at 9 and 19 have left
    # it, at 19 + 60.6.
    assert (pacing.max_size, pacing.wait_seconds) == (117, pytest.approx(19.6))
    assert "600 items per minute" in pacing.reason


def test_pacing_follows_the_window_exactly_in_steady_state() -> None:
    pacer = RatePacer()
    # 14 items a second for a minute; the last batch met a 429: the ceiling is 840 a minute.
    history = [_batch(14, float(i), refused=int(i == 60)) for i in range(1, 61)]
    assert pacer.ceiling(history) == RateCeiling(per_minute=840.0, unit="items", learned_at=59.0)
    waits = []
    clock = 60.0
    for _ in range(6):
        wait = pacer.pacing(history, 14).wait_seconds
        waits.append(round(wait, 6))
        clock += wait + 0.5  # each batch takes 0.5 s
        history.append(_batch(14, clock).model_copy(update={"processing_time": 0.5}))
    # Budget 823.2: three batches must leave first (the last of them, admitted at 2, at 62.6),
    # then one per batch.
    assert waits == [2.6, 0.5, 0.5, 0.5, 0.5, 0.5]
    admitted = [batch.ended_at - batch.processing_time for batch in history if batch.ended_at is not None]
    assert all(14 * sum(1 for other in admitted if at - 60.0 < other <= at) <= 823.2 for at in admitted[60:])


def test_a_later_429_lowers_the_ceiling() -> None:
    history = [_batch(100, 10.0 * i, refused=int(i == 6)) for i in range(1, 7)]
    history += [_batch(100, 90.0), _batch(100, 100.0, refused=1)]
    ceiling = RatePacer().ceiling(history)
    # Refused at 99: (38.4, 99] held the batches admitted at 39, 49, 59 and 89, and 100 more did not fit.
    assert ceiling is not None and ceiling.per_minute == 500.0


def test_a_429_whose_window_was_cut_off_is_not_read() -> None:
    history = [_batch(100, 10.0 * i, refused=int(i == 6)) for i in range(1, 7)]
    assert RatePacer().ceiling(history[2:], whole=False) is None
    assert RatePacer().ceiling(history[2:], whole=True) is not None


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
    decision = ScalingManager(batch_size=100).evaluate_scaling(history)
    assert (decision.new_batch_size, decision.wait_seconds) == (117, pytest.approx(19.6))
    assert "at most 117 items a batch under the learned rate limit" in decision.reason
    assert "pacing 19.6 s" in decision.reason
    assert decision.performance_metrics["rate_ceiling_per_minute"] == 600.0
    calm = ScalingManager().evaluate_scaling([_batch(100, 10.0 * i) for i in range(1, 7)])
    assert calm.wait_seconds == 0.0 and "pacing" not in calm.reason


def test_the_manager_paces_while_a_refused_call_is_in_its_history_and_not_after() -> None:
    # The history grows past the manager's HISTORY and slides, a 429 in it at batch 6: each
    # decision of a manager that read the history batch by batch is that of a fresh one.
    history = [_batch(100, 10.0 * i, refused=int(i == 6)) for i in range(1, ScalingManager.HISTORY + 20)]
    manager = ScalingManager(batch_size=100)
    paced = []
    for end in range(1, len(history) + 1):
        decision = manager.evaluate_scaling(history[max(end - ScalingManager.HISTORY, 0) : end])
        fresh = ScalingManager(batch_size=100).evaluate_scaling(history[max(end - ScalingManager.HISTORY, 0) : end])
        assert (decision.new_batch_size, decision.wait_seconds, decision.reason) == (
            fresh.new_batch_size,
            fresh.wait_seconds,
            fresh.reason,
        ), end
        paced.append("rate_ceiling_per_minute" in decision.performance_metrics)
    # Paced from the 429 on, until the history is cut at HISTORY (the pacer then cannot count
    # the window before the 429: `RatePacer.ceiling`), and not once the 429 slid out of it.
    changes = [end for end in range(1, len(paced)) if paced[end] != paced[end - 1]]
    assert changes == [5, ScalingManager.HISTORY - 1]
    assert not any(paced[ScalingManager.HISTORY + 5 :])


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


def test_the_batch_cap_never_falls_below_what_the_call_needs_to_keep_up() -> None:
    # Sizes 50 and 100 at a s fixed + 10 ms an item, one ending every 2.5 s; the 429 bounds the
    # limit at 450 a minute, a budget of 441 (7.35 items/s). A batch keeps up from
    # n = (a + g) * 7.35 / (1 - 0.0735), 1.1 x that with the slack, g the shortest gap between a
    # batch's end and the next call: at a = 1 s, g = 0.5 s and n = 13.1 (33 batches of 13); at
    # a = 4 s the calls overlap, g = 0, and n = 34.9 (12 batches of 36).
    def history(fixed: float) -> list[BatchResult]:
        return [
            _batch(size, 2.5 * i, refused=int(i == 6)).model_copy(update={"processing_time": fixed + 0.01 * size})
            for i, size in enumerate([50, 100, 50, 100, 50, 100], start=1)
        ]

    assert RatePacer().pacing(history(1.0), 100).max_size == 13
    assert RatePacer().pacing(history(4.0), 100).max_size == 36
