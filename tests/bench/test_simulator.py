"""Tests of the batch-size bench: the simulator, its oracle, and the peers' published rules."""

from __future__ import annotations

import random
import statistics
from typing import Any

import pytest

from bench.peers import (
    PEERS,
    AIMDPolicy,
    BeamBatchElementsPolicy,
    BinarySearchDownPolicy,
    ClassicRulePolicy,
    FixedPolicy,
)
from bench.policies import OraclePolicy, build_policy
from bench.simulator import (
    Phase,
    Workload,
    binomial,
    find_oracle,
    sample_batch,
    simulate,
)
from bench.workloads import WORKLOADS, get_workload
from scaling_core.config import ScalingConfig
from scaling_core.results import BatchResult, ConfidenceLevel, ScalingAction


def _config(**overrides: Any) -> ScalingConfig:
    values: dict[str, Any] = {
        "initial_batch_size": 2,
        "min_batch_size": 1,
        "max_batch_size": 10,
        "high_confidence_threshold": 0.9,
        "low_confidence_threshold": 0.5,
        "processing_time_threshold": 3.0,
    }
    values.update(overrides)
    return ScalingConfig(**values)


# E[T(n)] = 1 + 0.2n <= 3 allows n <= 10; q(n) = 0.95 - 0.02*(n - 5) >= 0.9 allows n <= 7;
# the cliff at 9 forbids 9 and 10. Time per item 1/n + 0.2 falls with n, so the best size is 7.
_TINY_PHASE = Phase(fixed_s=1.0, per_item_s=0.2, noise_sigma=0.1, q0=0.95, knee=5, slope=0.02, cliff=9)


def _tiny(config: ScalingConfig | None = None, *phases: Phase, total: int = 70) -> Workload:
    return Workload(
        name="tiny",
        description="hand-computable",
        config=config or _config(),
        total_items=total,
        phases=phases or (_TINY_PHASE,),
    )


def _batch(
    size: int,
    *,
    seconds: float = 1.0,
    high: int | None = None,
    successful: int | None = None,
    failed_whole: bool = False,
    items: int | None = None,
) -> BatchResult:
    total = size if items is None else items
    ok = 0 if failed_whole else (total if successful is None else successful)
    high_count = 0 if failed_whole else (ok if high is None else high)
    return BatchResult(
        batch_id=f"b{size}",
        batch_size=size,
        total_items=total,
        successful_items=ok,
        failed_items=total - ok,
        processing_time=seconds,
        confidence_distribution={
            ConfidenceLevel.HIGH: high_count,
            ConfidenceLevel.MEDIUM: 0,
            ConfidenceLevel.LOW: total - high_count,
        },
        failed_whole=failed_whole,
    )


# --- oracle -----------------------------------------------------------------------------


def test_oracle_picks_the_cheapest_feasible_size_of_a_hand_computed_workload() -> None:
    oracle = find_oracle(_tiny())
    (optimum,) = oracle.phases
    assert optimum.size == 7
    assert optimum.relaxed == ()
    assert optimum.seconds_per_success == pytest.approx(2.4 / 7)
    assert oracle.total_time == pytest.approx(70 * 2.4 / 7)  # 24 s


def test_oracle_sums_phases_and_counts_item_failures() -> None:
    # From item 35 the knee is at 2 (q(n) >= 0.9 for n <= 4) and 4% of items fail:
    # (1 + 0.8) / (4 * 0.96) = 0.46875 s per successful item.
    second = Phase(
        start_item=35, fixed_s=1.0, per_item_s=0.2, q0=0.95, knee=2, slope=0.02, item_failure_p=0.04
    )
    oracle = find_oracle(_tiny(None, _TINY_PHASE, second))
    assert [o.size for o in oracle.phases] == [7, 4]
    assert [o.items for o in oracle.phases] == [35, 35]
    assert oracle.phases[1].seconds_per_success == pytest.approx(0.46875)
    assert oracle.total_time == pytest.approx(35 * 2.4 / 7 + 35 * 0.46875)


def test_oracle_drops_quality_then_time_when_nothing_is_feasible() -> None:
    no_quality = find_oracle(_tiny(_config(high_confidence_threshold=0.99)))
    assert no_quality.phases[0].relaxed == ("quality",)
    assert no_quality.phases[0].size == 8  # largest size below the cliff within the time limit
    nothing = find_oracle(_tiny(_config(processing_time_threshold=1.1, high_confidence_threshold=0.99)))
    assert nothing.phases[0].relaxed == ("quality", "time")
    assert nothing.phases[0].size == 8


def test_every_workload_has_a_strictly_feasible_optimum_inside_its_limits() -> None:
    # The one workload whose quality target no size meets, on purpose.
    unmet = {"unmet-quality": ("quality",)}
    for workload in WORKLOADS:
        for optimum in find_oracle(workload).phases:
            phase = workload.phases[optimum.phase_index]
            config = workload.config
            assert optimum.relaxed == unmet.get(workload.name, ()), workload.name
            assert config.min_batch_size <= optimum.size <= config.max_batch_size
            if not optimum.relaxed:
                assert phase.high_share(optimum.size) >= config.high_confidence_threshold
            assert phase.expected_time(optimum.size) <= config.processing_time_threshold
            assert not phase.fails_whole(optimum.size)


# --- sampling and runs --------------------------------------------------------------------


def test_binomial_matches_mean_and_variance_on_both_algorithms() -> None:
    rng = random.Random(7)
    for n, p in ((40, 0.1), (500, 0.3), (300, 0.92)):  # waiting times, BTRS, and symmetry
        draws = [binomial(rng, n, p) for _ in range(4000)]
        assert all(0 <= d <= n for d in draws)
        assert statistics.fmean(draws) == pytest.approx(n * p, rel=0.02)
        assert statistics.variance(draws) == pytest.approx(n * p * (1 - p), rel=0.1)
    assert binomial(rng, 10, 0.0) == 0
    assert binomial(rng, 10, 1.0) == 10


def test_sampled_high_share_over_all_items_averages_to_q_despite_item_failures() -> None:
    phase = Phase(fixed_s=1.0, per_item_s=0.01, q0=0.8, item_failure_p=0.1)
    rng = random.Random(3)
    shares = []
    for i in range(400):
        result = sample_batch(phase, batch_id=str(i), asked=200, items=200, rng=rng).result
        assert sum(result.confidence_distribution.values()) == result.total_items == 200
        assert result.successful_items + result.failed_items == 200
        assert result.confidence_distribution[ConfidenceLevel.LOW] >= result.failed_items
        shares.append(result.high_share)
    assert statistics.fmean(shares) == pytest.approx(0.8, abs=0.01)


def test_a_batch_at_the_cliff_fails_whole_and_costs_the_timeout() -> None:
    phase = Phase(fixed_s=1.0, per_item_s=0.1, cliff=5, failure_cost_s=7.5)
    sampled = sample_batch(phase, batch_id="x", asked=6, items=6, rng=random.Random(0))
    result = sampled.result
    assert result.failed_whole and result.successful_items == 0 and result.failed_items == 6
    assert result.confidence_distribution[ConfidenceLevel.LOW] == 6
    assert result.processing_time == 7.5
    assert sampled.expected_high_share == 0.0
    below = sample_batch(phase, batch_id="y", asked=4, items=4, rng=random.Random(0)).result
    assert not below.failed_whole


def test_simulation_is_deterministic_per_seed() -> None:
    workload = get_workload("heavy-noise")
    first = simulate(workload, build_policy("beam", workload, 1), 1)
    again = simulate(workload, build_policy("beam", workload, 1), 1)
    other = simulate(workload, build_policy("beam", workload, 2), 2)
    assert first.records == again.records
    assert first.total_time == again.total_time
    assert first.records != other.records


def test_fixed_policy_time_is_the_sum_of_its_batch_times() -> None:
    workload = get_workload("item-failures")
    outcome = simulate(workload, FixedPolicy(workload.config), 0)
    assert outcome.total_time == pytest.approx(sum(r.time_s for r in outcome.records))
    assert outcome.total_time == pytest.approx(sum(r.processing_time for r in outcome.history))
    assert outcome.delivered == workload.total_items and not outcome.truncated
    assert {r.size for r in outcome.records} == {workload.config.initial_batch_size}
    # Only the last batch may hold fewer items than asked.
    assert all(r.items == r.size for r in outcome.records[:-1])
    assert outcome.time_ratio == pytest.approx(outcome.total_time / find_oracle(workload).total_time)


def test_batches_belong_to_the_phase_of_the_items_delivered_before_them() -> None:
    workload = get_workload("quality-drift-down")
    outcome = simulate(workload, FixedPolicy(workload.config), 0)
    delivered = 0
    for record in outcome.records:
        assert record.phase == (1 if delivered >= workload.phases[1].start_item else 0)
        assert record.expected_high_share == workload.phases[record.phase].high_share(record.items)
        delivered += record.successful


def test_the_oracle_policy_runs_close_to_the_oracle_time_even_with_outliers() -> None:
    # The lognormal factor has mean 1 and E[T] includes the outliers' mean, so a run at the
    # oracle's size must cost the oracle time up to noise.
    workload = get_workload("heavy-noise")
    ratios = [simulate(workload, OraclePolicy(workload), seed).time_ratio for seed in range(4)]
    assert statistics.fmean(ratios) == pytest.approx(1.0, abs=0.03)


def test_run_metrics_flag_low_quality_slow_and_failed_batches() -> None:
    # Fixed at 9 items: q(9) = 0.87 < 0.9 - 0.02 and E[T(9)] = 2.8 s > 1.05 * 2.0 s.
    config = _config(initial_batch_size=9, processing_time_threshold=2.0)
    no_cliff = Phase(fixed_s=1.0, per_item_s=0.2, q0=0.95, knee=5, slope=0.02)
    bad = simulate(_tiny(config, no_cliff, total=72), FixedPolicy(config), 0)  # 8 full batches
    assert bad.low_quality_share == 1.0 and bad.slow_share == 1.0 and bad.whole_failures == 0
    good_config = _config(initial_batch_size=5, processing_time_threshold=2.0)
    good = simulate(_tiny(good_config, no_cliff), FixedPolicy(good_config), 0)
    assert good.low_quality_share == 0.0 and good.slow_share == 0.0
    # With the cliff at 9 every batch fails: the run stops at the cap and says so.
    stuck = simulate(_tiny(config), FixedPolicy(config), 0)
    assert stuck.truncated and stuck.delivered == 0
    assert stuck.whole_failures == len(stuck.records) == _tiny(config).batch_cap()


# --- peers --------------------------------------------------------------------------------

_PEER_CONFIG = _config(
    initial_batch_size=100,
    min_batch_size=10,
    max_batch_size=400,
    processing_time_threshold=5.0,
    low_confidence_threshold=0.7,
)


def test_fixed_keeps_the_initial_size() -> None:
    policy = FixedPolicy(_PEER_CONFIG)
    decision = policy.evaluate_scaling([_batch(100, failed_whole=True)])
    policy.apply_scaling_decision(decision)
    assert policy.get_current_batch_size() == 100 and decision.action == ScalingAction.MAINTAIN


def test_classic_rule_grows_every_third_batch_on_a_good_window() -> None:
    policy = ClassicRulePolicy(_PEER_CONFIG)
    good = [_batch(100, seconds=2.0, high=95) for _ in range(3)]
    assert policy.evaluate_scaling(good[:2]).new_batch_size == 100  # not an evaluation point
    decision = policy.evaluate_scaling(good)
    assert decision.action == ScalingAction.INCREASE and decision.new_batch_size == 150
    policy.apply_scaling_decision(decision)
    assert policy.get_current_batch_size() == 150
    policy.apply_scaling_decision(policy.evaluate_scaling(good * 2))
    policy.apply_scaling_decision(policy.evaluate_scaling(good * 3))
    assert policy.get_current_batch_size() == 338  # 150 -> 225 -> 338 (round(337.5))
    policy.apply_scaling_decision(policy.evaluate_scaling(good * 4))
    assert policy.get_current_batch_size() == 400  # 507 clamped to max_batch_size


@pytest.mark.parametrize(
    "window",
    [
        [_batch(100, seconds=2.0, high=60)] * 3,  # High share 0.60 < 0.70
        [_batch(100, seconds=6.0, high=95)] * 3,  # slower than the 5 s limit
        [_batch(100, seconds=2.0, high=70, successful=75)] * 3,  # 75% success < 80%
    ],
)
def test_classic_rule_shrinks_on_any_breach(window: list[BatchResult]) -> None:
    decision = ClassicRulePolicy(_PEER_CONFIG).evaluate_scaling(window)
    assert decision.action == ScalingAction.DECREASE and decision.new_batch_size == 67  # 100 / 1.5


def test_classic_rule_holds_between_the_thresholds_and_looks_at_five_batches() -> None:
    middling = [_batch(100, seconds=2.0, high=85)] * 3  # 0.85: neither > 0.9 nor < 0.7
    assert ClassicRulePolicy(_PEER_CONFIG).evaluate_scaling(middling).action == ScalingAction.MAINTAIN
    # A bad sixth-from-last batch is outside the window of five.
    history = [_batch(100, seconds=2.0, high=0)] + [_batch(100, seconds=2.0, high=100)] * 5
    assert ClassicRulePolicy(_PEER_CONFIG).evaluate_scaling(history).new_batch_size == 150


def test_aimd_adds_a_step_on_good_batches_and_backs_off_by_ten_percent() -> None:
    policy = AIMDPolicy(_PEER_CONFIG)
    assert policy.evaluate_scaling([_batch(100, seconds=2.0, high=95)]).new_batch_size == 110
    for dropped in (
        _batch(100, seconds=5.5, high=95),
        _batch(100, seconds=2.0, high=80),
        _batch(100, failed_whole=True),
    ):
        assert policy.evaluate_scaling([dropped]).new_batch_size == 90
    # A batch less than half full (end of data) does not grow the size.
    assert policy.evaluate_scaling([_batch(100, items=40, high=40)]).new_batch_size == 100
    low = AIMDPolicy(_config(initial_batch_size=10, min_batch_size=10, max_batch_size=12))
    assert low.evaluate_scaling([_batch(10, failed_whole=True)]).new_batch_size == 10
    assert low.evaluate_scaling([_batch(10, high=10)]).new_batch_size == 12


def test_beam_starts_at_min_and_then_doubles_before_fitting() -> None:
    policy = BeamBatchElementsPolicy(
        _config(min_batch_size=8, initial_batch_size=8, max_batch_size=1000), random.Random(0)
    )
    assert policy.get_current_batch_size() == 8
    assert policy.evaluate_scaling([_batch(8, seconds=1.5)]).new_batch_size == 16


def test_beam_size_is_the_duration_target_of_the_fitted_line_capped_at_twice_the_last() -> None:
    # time = 1 + x/16 exactly; limit 6 s -> (6 - 1) * 16 = 80; overhead 5% -> 16 * 19 = 304.
    config = _config(
        min_batch_size=1, initial_batch_size=1, max_batch_size=1000, processing_time_threshold=6.0
    )
    history = [_batch(x, seconds=1.0 + x / 16) for x in (8, 16, 32, 64)]
    policy = BeamBatchElementsPolicy(config, random.Random(0))
    a, b = policy.fit([8.0, 16.0, 32.0, 64.0], [1.5, 2.0, 3.0, 5.0])
    assert a == pytest.approx(1.0) and b == pytest.approx(1 / 16)
    assert abs(policy.evaluate_scaling(history).new_batch_size - 80) <= 1
    # The last batch was 32, so growth stops at 64.
    history[-1], history[-2] = history[-2], history[-1]
    assert BeamBatchElementsPolicy(config, random.Random(0)).evaluate_scaling(history).new_batch_size == 64
    # With a generous time limit the 5% overhead target binds: a = 0.05 * (a + b*x).
    loose = _config(
        min_batch_size=1, initial_batch_size=1, max_batch_size=1000, processing_time_threshold=100.0
    )
    history = [_batch(x, seconds=1.0 + x / 16) for x in (8, 16, 32, 200)]
    assert (
        abs(BeamBatchElementsPolicy(loose, random.Random(0)).evaluate_scaling(history).new_batch_size - 304)
        <= 1
    )


def test_beam_refit_drops_a_point_with_large_cooks_distance() -> None:
    xs = [float(x) for x in range(10, 130, 10)]
    ys = [1.0 + x / 16 for x in xs]
    ys[-1] += 20.0  # one wild timing at the largest size
    a, b = BeamBatchElementsPolicy.fit(xs, ys)
    assert a == pytest.approx(1.0, abs=1e-9) and b == pytest.approx(1 / 16, abs=1e-9)


def test_binary_search_starts_at_max_halves_on_failure_and_never_grows() -> None:
    policy = BinarySearchDownPolicy(_PEER_CONFIG)
    assert policy.get_current_batch_size() == 400
    sizes = []
    for failed in (False, True, False, False, True, True, True, True, False):
        size = policy.get_current_batch_size()
        policy.apply_scaling_decision(
            policy.evaluate_scaling([_batch(size, failed_whole=failed, seconds=9.0)])
        )
        sizes.append(policy.get_current_batch_size())
    assert sizes == [400, 200, 200, 200, 100, 50, 25, 12, 12]
    for _ in range(3):
        policy.apply_scaling_decision(policy.evaluate_scaling([_batch(12, failed_whole=True)]))
    assert policy.get_current_batch_size() == 10  # min_batch_size floor


@pytest.mark.parametrize("name", sorted(PEERS))
def test_every_peer_stays_within_min_and_max(name: str) -> None:
    for workload_name in ("cold-start", "knee-and-cliff", "quality-drift-up"):
        workload = get_workload(workload_name)
        outcome = simulate(workload, build_policy(name, workload, 0), 0, policy_name=name)
        assert outcome.records and outcome.out_of_bounds == 0, workload_name
