"""The bench's rate limits: the provider's sliding minute, the paced oracle, and who waits on a 429."""

from __future__ import annotations

import pytest

from bench.peers import FixedPolicy
from bench.policies import build_policy
from bench.simulator import Phase, RateLimit, Workload, _Provider, find_oracle, simulate
from bench.workloads import get_workload
from scaling_core.config import ScalingConfig

# T(n) = 1 + 0.2n with no noise; 60 items a minute.
_PHASE = Phase(fixed_s=1.0, per_item_s=0.2, noise_sigma=0.0, q0=0.95)
_LIMIT = RateLimit(tokens_per_minute=600, tokens_per_item=10)


def _workload(total: int = 300) -> Workload:
    return Workload(
        name="rate-tiny",
        description="hand-computable",
        config=ScalingConfig(
            initial_batch_size=10, min_batch_size=1, max_batch_size=10, processing_time_threshold=5.0
        ),
        total_items=total,
        phases=(_PHASE,),
        rate_limit=_LIMIT,
    )


def test_the_provider_admits_a_sliding_minute_and_says_when_there_is_room() -> None:
    provider = _Provider(_LIMIT)
    assert provider.admit(0.0, 30) is None
    assert provider.admit(10.0, 30) is None  # 60 items in the minute: full
    assert provider.admit(20.0, 1) == pytest.approx(40.0)  # the first 30 leave at 60
    assert provider.admit(60.0, 30) is None
    assert provider.admit(61.0, 100) == 60.0  # more than the limit: never


def test_the_oracle_is_the_best_fixed_size_at_the_best_fixed_pacing() -> None:
    # A minute admits floor(60/n) batches, one every 60/floor(60/n) s, or when the one before
    # ends: n = 2 starts every 2 s (1.4 s a call), 1 s an item, as do 3 to 6 and 10; n = 1 is
    # held back by its own 1.2 s; n = 7 gets 8 slots of 7.5 s (1.07 s an item). Ties keep 2.
    (optimum,) = find_oracle(_workload()).phases
    assert (optimum.size, optimum.seconds_per_success) == (2, pytest.approx(1.0))


def test_a_peer_takes_a_429_as_a_whole_failure_and_the_manager_waits_and_retries() -> None:
    workload = _workload()
    peer = simulate(workload, FixedPolicy(workload.config), 0)
    refused = [record for record in peer.records if record.cause == "rate_limited"]
    assert refused and all(record.failed_whole and record.time_s == _LIMIT.refused_call_s for record in refused)
    assert peer.refused_calls == len(refused)

    manager = simulate(workload, build_policy("manager", workload, 0), 0)
    assert manager.delivered == workload.total_items
    assert not any(record.failed_whole for record in manager.records)
    limited = [batch for batch in manager.history if batch.rate_limited_calls]
    assert limited and all(batch.rate_wait > 0 for batch in limited)
    # The clock holds the calls, the waits on 429s and the pacing; a batch's time only its calls:
    # counted in both, a wait would take the sum over the clock.
    assert manager.total_time >= sum(batch.processing_time + batch.rate_wait for batch in manager.history) - 1e-9
    assert max(batch.ended_at or 0.0 for batch in manager.history) == pytest.approx(manager.total_time)
    assert manager.refused_calls / manager.calls <= 0.05


def test_a_workload_without_a_limit_makes_no_calls_of_the_provider() -> None:
    workload = get_workload("quality-knee")
    outcome = simulate(workload, build_policy("manager", workload, 0), 0)
    assert (outcome.calls, outcome.refused_calls) == (0, 0)
    assert all(batch.ended_at is None and batch.rate_limited_calls == 0 for batch in outcome.history)
