"""Each rule of the manager as an exact size sequence on a noise-free workload (as Beam's
`util_test` pins `[1, 2, 4, 8, 12, 12]` on a fake clock), or on seeded noise where noise is
the point."""

from __future__ import annotations

import math
from collections.abc import Callable
import random

import pytest

from scaling_core import ScalingAction, ScalingConfig, ScalingManager
from scaling_core.limits import FailureCeiling
from scaling_core.window import EvidenceWindow
from tests.scaling_core.rules import BatchResult, drive, result, weighed_result

# The time limit: 1 s + 10 ms/item reaches 0.97 x 5 s at 385 items.
TIMED = ScalingConfig(initial_batch_size=20, min_batch_size=5, max_batch_size=1000, processing_time_threshold=5.0)
SMALL = ScalingConfig(initial_batch_size=20, max_batch_size=300)


def linear(size: int, number: int) -> BatchResult:
    return result(size, 1.0 + 0.01 * size)


def cheap(size: int, number: int) -> BatchResult:
    return result(size, 0.5 + 0.001 * size)


def test_growth_waits_for_evidence_then_compounds_with_a_fit_and_slows_near_the_time_limit() -> None:
    sizes, decision = drive(TIMED, linear, 15)
    # 3 batches of evidence; x1.5 without a fit; x2.25 while the fit puts the step under half
    # the time limit; x1.5, then x1.15 within a step of the limit; at rest on it.
    assert sizes == [20, 20, 20, 30, 68, 102, 153, 230, 345, 385, 385, 385, 385, 385, 385]
    assert decision.new_batch_size == 270  # the probe 30% under, once every 6 batches at rest
    assert "time limit" in decision.reason


def test_probes_alternate_depths_return_at_once_and_stop_when_too_few_items_remain() -> None:
    sizes, _ = drive(TIMED, linear, 40)
    assert sizes[20:] == [385, 385, 327, 385, 385, 385, 385, 385, 385, 270, 385, 385, 385, 385, 385, 385, 327, 385, 385, 385]
    near_the_end, _ = drive(TIMED, linear, 40, remaining=lambda number: max(0, 5000 - 300 * number))
    assert near_the_end[20:] == [385] * 20


def test_one_batch_far_over_the_time_limit_shrinks_at_once_and_the_new_cost_is_learned() -> None:
    def slower_from_12(size: int, number: int) -> BatchResult:
        return result(size, 1.0 + (0.025 if number >= 12 else 0.01) * size)

    sizes, decision = drive(TIMED, slower_from_12, 20)
    # 2.5x per-item cost from batch 12: 385 items take 10.6 s; the new limit is 154.
    assert sizes == [20, 20, 20, 30, 68, 102, 153, 230, 345, 385, 385, 385, 385, 159, 135, 155, 155, 155, 155, 155]
    assert "25.00 ms/item" in decision.reason


def test_the_quality_knee_is_approached_and_held() -> None:
    def knee(size: int, number: int) -> BatchResult:
        share = 0.97 if size <= 100 else max(0.3, 0.97 - 0.002 * (size - 100))
        return result(size, 0.5 + 0.001 * size, high=round(share * size))

    sizes, decision = drive(ScalingConfig(initial_batch_size=20, max_batch_size=500), knee, 60)
    # The share crosses 0.90 at 135 items: 153 is bad at once; the probes close in on the
    # crossing. 136 (0.898, not provably bad) is a tentative ceiling: held under for the 40
    # batches its evidence is remembered, then tried again.
    assert sizes[:18] == [20, 20, 20, 30, 68, 153, 98, 113, 127, 136, 127, 127, 127, 127, 127, 127, 127, 127]
    assert sizes[18:] == [127] * 32 + [137] + [127] * 9
    assert "quality limit" in decision.reason
    assert "tentative" in decision.reason


def test_a_failure_cliff_steps_back_holds_approaches_in_small_steps_and_is_confirmed() -> None:
    def cliff(size: int, number: int) -> BatchResult:
        if size >= 150:
            return result(size, 8.0, failed=True, error="TimeoutError: stage timed out after 8 s")
        return result(size, 0.5 + 0.001 * size)

    sizes, decision = drive(ScalingConfig(initial_batch_size=20, max_batch_size=500), cliff, 18)
    # One failure is no proof: 153 is tried once more from 136, then held off.
    assert sizes == [20, 20, 20, 30, 68, 153, 68, 68, 68, 78, 90, 103, 118, 136, 153, 136, 136, 136]
    assert decision.new_batch_size == 136
    assert "2 whole-batch failure(s) at 153 items or more" in decision.reason


def test_a_transient_failure_at_a_size_that_succeeded_keeps_the_size() -> None:
    def one_503(size: int, number: int) -> BatchResult:
        return result(size, 1.0, failed=True, error="HTTPStatusError: 503") if number == 15 else cheap(size, number)

    sizes, _ = drive(SMALL, one_503, 22)
    assert sizes[14:] == [300, 300, 300, 300, 300, 210, 300, 300]


def test_failures_in_a_row_that_a_flaky_service_explains_keep_the_size() -> None:
    # One call in ten fails (a 503), whatever the size: batches 20, 30, 40 and 50 alone, then
    # 60 and 61 in a row. The pair is what such a service does every hundred calls or so: the
    # size is kept, and no ceiling is learned from it.
    def flaky(size: int, number: int) -> BatchResult:
        if number in (20, 30, 40, 50, 60, 61):
            return result(size, 1.0, failed=True, error="HTTPStatusError: 503")
        return cheap(size, number)

    sizes, decision = drive(SMALL, flaky, 66)
    # The probes below the maximum go on as before (255 and 210).
    assert sizes[55:] == [255, 300, 300, 300, 300, 300, 300, 300, 210, 300, 300]
    assert "failure_ceiling" not in decision.performance_metrics
    _, after_pair = drive(SMALL, flaky, 62)
    assert after_pair.new_batch_size == 300
    assert after_pair.reason.startswith("the last 2 batches (300 items) failed whole (HTTPStatusError: 503)")
    assert "taken as transient, same size again" in after_pair.reason
    # The same pair with no flaky call on record says the ceiling moved: halve.
    def pair(size: int, number: int) -> BatchResult:
        return result(size, 1.0, failed=True, error="HTTPStatusError: 503") if number in (60, 61) else cheap(size, number)

    sizes, _ = drive(SMALL, pair, 63)
    assert sizes[60:] == [300, 300, 150]


def test_a_bug_among_flaky_calls_is_found_as_quickly_as_without_them() -> None:
    # The same flaky 503s, then a deploy that raises ValueError on every call: a new kind of
    # error is no flaky call, so its streak halves and is called deterministic after four.
    def broken(size: int, number: int) -> BatchResult:
        if number in (20, 30, 40, 50):
            return result(size, 1.0, failed=True, error="HTTPStatusError: 503")
        if number >= 60:
            return result(size, 0.1, failed=True, error="ValueError: bad key")
        return cheap(size, number)

    sizes, decision = drive(SMALL, broken, 64)
    assert sizes[60:] == [300, 300, 150, 75]
    assert decision.reason.startswith("deterministic failure: 4 whole failures in a row at 75 to 300 items (ValueError")


@pytest.mark.parametrize(("flaky", "tests"), [(True, 1), (False, 3)])
def test_a_run_of_failures_is_one_test_of_the_ceiling_where_transient_failures_are_on_record(
    flaky: bool, tests: int
) -> None:
    # Three failures in a row at 385: where four earlier 503s were refuted, they may be one
    # outage and double the ceiling's memory once; with none on record, each doubles it.
    def outage(size: int, number: int) -> BatchResult:
        if number in (60, 61, 62) or (flaky and number in (20, 30, 40, 50)):
            return result(size, 1.0, failed=True, error="HTTPStatusError: 503")
        return linear(size, number)

    manager = ScalingManager(TIMED)
    history = [outage(385 if number >= 60 else 200, number) for number in range(63)]
    window = EvidenceWindow.of([batch.view for batch in history], TIMED, base=385)
    failures = window.failures.size_failures()
    assert [failure.size for failure in failures] == [385, 385, 385]
    assert FailureCeiling._tests(window, failures) == tests
    assert manager.evaluate_scaling(history).performance_metrics["failure_ceiling"] == 385


def test_a_ceiling_from_a_streak_of_unlucky_failures_is_tested_again_under_timing_noise() -> None:
    # Three calls in a row fail (a 503 streak) at 255-288, 130 and 65: a ceiling by every sign.
    # Held at 65, the sizes are soon too alike for the recent fit to show the fixed cost
    # (2 s of 3.3 s); what staying there costs is read from the batches before the ceiling,
    # so that it is tested again after a few dozen batches, whatever the noise.
    config = ScalingConfig(initial_batch_size=50, min_batch_size=10, max_batch_size=800, processing_time_threshold=8.0)
    recovered = []
    for seed in range(6):
        rng = random.Random(seed)

        def streak(size: int, number: int, rng: random.Random = rng) -> BatchResult:
            if number in (40, 41, 42):
                return result(size, 8.0, failed=True, error="HTTPStatusError: 503")
            return result(size, (2.0 + 0.02 * size) * math.exp(rng.gauss(0, 0.15)))

        sizes, _ = drive(config, streak, 260)
        assert max(sizes[43:60]) < 100  # the ceiling holds at first
        recovered.append(next((number for number in range(43, 260) if sizes[number] > 1.5 * sizes[43]), None))
    assert recovered == [198, 181, 131, 171, 169, 223]


def test_a_processor_that_fails_whatever_the_size_is_never_learned_as_a_size() -> None:
    def broken(size: int, number: int) -> BatchResult:
        return result(size, 0.1, failed=True, error="ValueError: bad key") if 10 <= number < 14 else cheap(size, number)

    sizes, decision = drive(SMALL, broken, 14)
    # Once (transient?), twice (halve), four times over a 4x span: deterministic, back to 300.
    assert sizes[9:] == [300, 300, 300, 150, 75]
    assert decision.new_batch_size == 300
    assert decision.performance_metrics["deterministic_failures"] == 4
    # The pipeline prefixes "failed on every call, whatever the batch size": the reason is the evidence.
    assert decision.reason.startswith("deterministic failure: 4 whole failures in a row at 75 to 300 items")
    assert "ValueError: bad key" in decision.reason
    fixed, _ = drive(SMALL, lambda size, number: broken(size, number) if number < 14 else cheap(size, number), 22)
    assert fixed[14:] == [300, 300, 300, 300, 300, 300, 255, 300]


def test_a_fixed_cost_over_the_time_limit_is_no_reason_to_shrink() -> None:
    # 3 s a call plus 10 ms an item against a 2 s limit: no size meets it, and a smaller batch
    # only pays the 3 s more often. Once the fit shows the fixed cost (after one cut, from the
    # slow first batches), the size grows to the maximum and stays, whatever size it ran at.
    config = ScalingConfig(initial_batch_size=50, min_batch_size=10, max_batch_size=500, processing_time_threshold=2.0)
    sizes, decision = drive(config, lambda size, number: result(size, 3.0 + 0.01 * size), 24)
    assert sizes == [50, 50, 50, 25, 38, 57, 86, 129, 194, 291, 436, 500, 500, 500, 500, 500, 500, 350, *[500] * 6]
    assert decision.performance_metrics["time_unmet"] == 1.0
    assert "no size meets the time limit: the fitted fixed cost 3.00 s alone is over 2 s; choosing by throughput" in decision.reason


def test_a_quality_target_no_size_meets_is_ignored_and_the_reason_says_so() -> None:
    def flat(size: int, number: int) -> BatchResult:
        return result(size, 1.0 + 0.01 * size, high=round(0.8 * size))

    config = ScalingConfig(initial_batch_size=50, max_batch_size=400, processing_time_threshold=5.0)
    sizes, decision = drive(config, flat, 12)
    assert sizes == [50, 50, 50, 25, 56, 126, 189, 284, 327, 376, 376, 376]
    assert decision.action == ScalingAction.MAINTAIN
    assert "no size meets the quality target 0.90" in decision.reason
    assert "choosing by throughput" in decision.reason
    assert decision.performance_metrics["quality_unmet"] == 1.0


def test_a_size_whose_share_is_under_the_target_unproven_is_a_ceiling_approached_by_probes() -> None:
    from scaling_core import ScalingManager

    config = ScalingConfig(initial_batch_size=100, max_batch_size=500)
    # 150 ran at 0.95; the newest batch at 200 came back at 0.89: not provably under 0.90 at
    # its 200 items, but quality does not improve with size: no growth past it, and a probe
    # 35% of the way from the good size.
    history = [result(150, 1.0 + 0.002 * 150, high=143)] * 6 + [result(200, 1.0 + 0.002 * 200, high=178)]
    decision = ScalingManager(config).evaluate_scaling(history)
    assert decision.new_batch_size == 168
    assert "High share 0.89 near 200 items is under the target 0.90 (tentative: not yet proven)" in decision.reason

    def knee(size: int, number: int) -> BatchResult:
        share = 0.95 if size <= 150 else 0.95 - 0.0012 * (size - 150)  # crosses 0.90 at 192
        return result(size, 1.0 + 0.002 * size, high=round(share * size))

    # 338 is proven bad; 216 and 198 are under the target unproven; the size settles at 188
    # (0.904) and does not leap over 198 again while that evidence is remembered.
    sizes, _ = drive(config, knee, 24)
    assert sizes == [100, 100, 100, 150, 338, 216, 173, 188, 198] + [188] * 15


def _weighed_run(config: ScalingConfig, weights: list[float], seconds: Callable[[int, float], float]) -> tuple[ScalingManager, list[BatchResult]]:
    """The manager through a ledger of `weights`; a batch takes `seconds(items, total weight)`.

    The claim takes up to the asked size of items in order while their summed weight stays
    within the manager's cap (the first item always), as the pipeline's ledger does.
    """
    manager = ScalingManager(config)
    history: list[BatchResult] = []
    start = 0
    while start < len(weights):
        asked, cap = manager.get_current_batch_size(), manager.get_current_batch_weight()
        taken, total = 0, 0.0
        while start + taken < len(weights) and taken < asked:
            if taken and cap is not None and total + weights[start + taken] > cap:
                break
            total += weights[start + taken]
            taken += 1
        history.append(weighed_result(asked, taken, seconds(taken, total), total))
        start += taken
        manager.apply_scaling_decision(manager.evaluate_scaling(history))
    return manager, history


def test_heavy_items_make_the_batch_shorter_within_the_time_limit() -> None:
    # A ledger of 4,000 items: light ones (about 50 tokens) then heavy ones (about 400), with a
    # spread between neighbours so that a batch's tokens per item vary. Time: 0.5 s + 2 ms an
    # item + 0.2 ms a token, noise-free; the limit is 5 s.
    weights = [(50.0 if i < 2_000 else 400.0) * (0.6 + 0.8 * ((i * 37) % 11) / 10) for i in range(4_000)]
    config = ScalingConfig(initial_batch_size=20, min_batch_size=5, max_batch_size=2_000, processing_time_threshold=5.0)
    manager, history = _weighed_run(config, weights, lambda items, total: 0.5 + 0.002 * items + 0.0002 * total)
    assert all(batch.processing_time <= 0.97 * 5.0 + 1e-9 for batch in history[3:])
    # The weight cost is learned (0.2 ms a token): the cap is the time limit solved for the tokens.
    last = history[-1]
    assert manager.get_current_batch_weight() == pytest.approx(
        (0.97 * 5.0 - 0.5 - 0.002 * manager.get_current_batch_size()) / 0.0002, rel=0.01
    )
    # At the switch to heavy items, batches are cut short by the cap before the size follows.
    first_heavy = next(index for index, batch in enumerate(history) if batch.total_weight / batch.total_items > 150)
    assert [batch.total_items < batch.asked_size for batch in history[first_heavy : first_heavy + 3]] == [True] * 3
    assert history[first_heavy].asked_size > 300 and last.asked_size < 60


def test_items_heavier_than_any_seen_are_cut_to_the_weight_the_size_was_measured_on() -> None:
    # Every light item weighs 20: a batch's weight is a multiple of its items, so no fit can tell
    # what a unit of weight costs. Then items of 200. The time is all weight (0.5 s + 1 ms a
    # unit): the size light items earned would take ten times the limit on heavy ones.
    weights = [20.0] * 3_000 + [200.0] * 300
    config = ScalingConfig(initial_batch_size=20, min_batch_size=1, max_batch_size=1_000, processing_time_threshold=5.0)
    manager, history = _weighed_run(config, weights, lambda items, total: 0.5 + 0.001 * total)
    first_heavy = next(index for index, batch in enumerate(history) if batch.total_weight > 20.0 * batch.total_items)
    before, cut = history[first_heavy - 1], history[first_heavy]
    # The cap was the size times the heaviest item seen (20): the batch took that weight.
    assert cut.asked_size > 150 and cut.total_weight <= 20.0 * cut.asked_size
    assert cut.total_items < cut.asked_size
    assert before.processing_time <= 5.0 and cut.processing_time <= 5.0
    # No batch of either kind ran over the limit.
    assert max(batch.processing_time for batch in history) <= 5.0
