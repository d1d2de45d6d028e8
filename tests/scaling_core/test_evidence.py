"""The statistics under the limits, checked against numpy and known values."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from scaling_core._evidence import (
    QualityPool,
    _inverse,
    _inverse3,
    fit_costs,
    fit_line,
    fit_weighted_costs,
    robust_spread,
    two_proportion_z,
    wilson_bounds,
)
from scaling_core.shifts import (
    StepReference,
    _confirmed,
    _residuals,
    common_shift,
    cost_change_point,
    ShiftMemo,
    StepMemo,
    pooled_change_point,
    PooledMemo,
    QualityMemo,
    quality_change_point,
    rise_under_test,
    slid,
    step_change_point,
)
from scaling_core.config import ScalingConfig
from scaling_core.results import BatchView
from scaling_core.window import EvidenceColumns, EvidenceWindow, PoolCarrier


def _sample(quadratic: float, seed: int = 3, count: int = 60) -> tuple[list[float], list[float]]:
    rng = random.Random(seed)
    sizes = [float(rng.randint(20, 400)) for _ in range(count)]
    seconds = [(1.0 + 0.01 * n + quadratic * n * n) * math.exp(rng.gauss(0, 0.05)) for n in sizes]
    return sizes, seconds


def test_the_linear_fit_is_weighted_least_squares_as_numpy_computes_it() -> None:
    sizes, seconds = _sample(0.0)
    fit = fit_costs(sizes, seconds, outlier_cutoff=None)
    assert fit is not None and fit.quadratic == 0.0
    # Weights 1/predicted^2 from an unweighted first pass: numpy.polyfit takes 1/sigma.
    first = np.polyfit(sizes, seconds, 1)
    predicted = np.polyval(first, sizes)
    slope, intercept = np.polyfit(sizes, seconds, 1, w=1.0 / predicted)
    assert fit.per_item == pytest.approx(slope, rel=1e-6)
    assert fit.fixed == pytest.approx(intercept, rel=1e-6)


def test_curvature_is_kept_only_on_significant_evidence() -> None:
    curved = fit_costs(*_sample(2e-5), outlier_cutoff=None)
    assert curved is not None and curved.quadratic > 0 and curved.curvature_t > 3
    sizes, seconds = _sample(2e-5)
    # The unweighted first pass finds the curvature too; its predictions set the weights.
    first = np.polyfit(sizes, seconds, 2)
    c2, c1, c0 = np.polyfit(sizes, seconds, 2, w=1.0 / np.polyval(first, sizes))
    assert (curved.quadratic, curved.per_item, curved.fixed) == pytest.approx((c2, c1, c0), rel=1e-6)
    assert curved.throughput_optimum() == pytest.approx(math.sqrt(curved.fixed / curved.quadratic))
    for seed in range(20):
        linear = fit_costs(*_sample(0.0, seed=seed), outlier_cutoff=None, curvature_t=3.0)
        assert linear is not None and linear.quadratic == 0.0, seed


def test_the_written_out_inverse_of_the_normal_equations_is_the_general_one_to_the_bit() -> None:
    rng = random.Random(11)
    for _ in range(200):
        sizes = [rng.uniform(0.05, 1.0) for _ in range(rng.randint(3, 40))]
        weights = [rng.uniform(0.1, 10.0) for _ in sizes]
        xs = [sum(w * x**k for w, x in zip(weights, sizes)) for k in range(5)]
        matrix = [[xs[i + j] for j in range(3)] for i in range(3)]
        written = _inverse3(xs[0], xs[1], xs[2], xs[2], xs[3], xs[4])
        assert written == _inverse(matrix)
        assert written is not None and np.allclose(written, np.linalg.inv(np.array(matrix)), rtol=1e-6)
    assert _inverse3(1.0, 2.0, 3.0, 4.0, 6.0, 9.0) is None  # rank one: singular


def _weighed_sample(per_weight: float, seed: int = 5, count: int = 60) -> tuple[list[float], list[float], list[float]]:
    # Items of heavy-tailed weight (tokens): a batch's weight per item varies with its items.
    rng = random.Random(seed)
    sizes = [float(rng.randint(20, 200)) for _ in range(count)]
    weights = [sum(rng.lognormvariate(5.0, 1.0) for _ in range(int(n))) for n in sizes]
    seconds = [
        (1.0 + 0.002 * n + per_weight * w) * math.exp(rng.gauss(0, 0.05)) for n, w in zip(sizes, weights)
    ]
    return sizes, weights, seconds


def test_the_weighted_cost_fit_is_weighted_least_squares_on_items_and_weight() -> None:
    sizes, weights, seconds = _weighed_sample(2e-5)
    fit = fit_weighted_costs(sizes, weights, seconds)
    assert fit is not None and fit.weight_t > 2
    # The same two passes with numpy: unweighted, then weights 1/predicted^2.
    design = np.column_stack([np.ones(len(sizes)), sizes, weights])
    first = np.linalg.lstsq(design, seconds, rcond=None)[0]
    root = 1.0 / (design @ first)
    expected = np.linalg.lstsq(design * root[:, None], np.array(seconds) * root, rcond=None)[0]
    assert (fit.fixed, fit.per_item, fit.per_weight) == pytest.approx(tuple(expected), rel=1e-6)
    # Read at a weight per item, it is a plain cost line whose slope carries the weight.
    line = fit.at(250.0)
    assert line.per_item == pytest.approx(fit.per_item + 250.0 * fit.per_weight)
    assert line.seconds(100.0) == pytest.approx(fit.seconds(100.0, 25_000.0))
    assert line.seconds_upper(100.0, 2.0) > line.seconds(100.0)


def test_the_weight_a_batch_may_take_solves_the_time_limit_for_its_weight() -> None:
    fit = fit_weighted_costs(*_weighed_sample(2e-5))
    assert fit is not None
    # Solution to fixed + per_item*n + per_weight*W = 5 s for the mean; under it for the bound.
    mean = fit.largest_weight_within(100.0, 5.0)
    assert mean == pytest.approx((5.0 - fit.fixed - fit.per_item * 100.0) / fit.per_weight)
    bounded = fit.largest_weight_within(100.0, 5.0, z=2.0)
    assert 0.0 < bounded < mean
    assert fit.seconds_upper(100.0, bounded, 2.0) == pytest.approx(5.0, rel=1e-4)
    assert fit.largest_weight_within(100.0, fit.fixed / 2) == 0.0


def test_a_weight_that_costs_nothing_is_left_out_of_the_fit() -> None:
    assert fit_weighted_costs(*_weighed_sample(0.0)) is None


def test_the_time_limit_follows_heavy_items() -> None:
    sizes, weights, seconds = _weighed_sample(2e-5, count=80)
    views = [
        BatchView(asked=int(n), items=int(n), high=int(n), seconds=t, failed=False, weight=w)
        for n, w, t in zip(sizes, weights, seconds)
    ]
    config = ScalingConfig(max_batch_size=1000, processing_time_threshold=5.0)
    light = [*views, *(BatchView(asked=100, items=100, high=100, seconds=1.4, failed=False, weight=10_000.0),) * 3]
    heavy = [*views, *(BatchView(asked=100, items=100, high=100, seconds=5.0, failed=False, weight=190_000.0),) * 3]
    light_window = EvidenceWindow.of(light, config, base=100)
    heavy_window = EvidenceWindow.of(heavy, config, base=100)
    assert light_window.fit is not None and heavy_window.fit is not None
    assert light_window.metrics["recent_weight_per_item"] == pytest.approx(100.0)
    assert heavy_window.metrics["recent_weight_per_item"] == pytest.approx(1900.0)
    # 1 s + 0.2 s/100 items + 2e-5 s per token: 100-token items fit ~1,000 in 5 s, 1,900-token ones ~100.
    light_size = light_window.fit.largest_size_within(5.0)
    heavy_size = heavy_window.fit.largest_size_within(5.0)
    assert light_size > 5 * heavy_size
    assert 70 < heavy_size < 130


def test_the_time_limit_root_solves_fixed_plus_per_item_times_n() -> None:
    fit = fit_costs([10.0, 20.0, 40.0, 80.0], [1.1, 1.2, 1.4, 1.8], outlier_cutoff=None)
    assert fit is not None
    assert fit.largest_size_within(5.0) == pytest.approx((5.0 - 1.0) / 0.01, rel=1e-6)


def test_wilson_bounds_match_the_published_interval() -> None:
    # 8 of 10 at z = 1.96: (0.4902, 0.9433), Wilson (1927) / Newcombe (1998), method 3.
    lower, upper = wilson_bounds(8, 10, 1.96)
    assert (round(lower, 4), round(upper, 4)) == (0.4902, 0.9433)
    assert wilson_bounds(0, 0, 2.0) == (0.0, 1.0)


def test_the_two_proportion_z_and_the_robust_spread() -> None:
    # 60/100 against 40/100: pooled 0.5, se sqrt(0.25 * 0.02) = 0.0707, z = 2.83.
    assert two_proportion_z(60, 100, 40, 100) == pytest.approx(0.2 / math.sqrt(0.005))
    assert two_proportion_z(1, 0, 5, 10) == 0.0
    rng = np.random.default_rng(0)
    normal = rng.normal(0.0, 0.3, 4001).tolist()
    assert robust_spread(normal) == pytest.approx(0.3, rel=0.05)
    assert robust_spread([*normal, *[50.0] * 100]) == pytest.approx(0.3, rel=0.1)  # outliers barely move it


def _alternating(slow_after_switch: int) -> list[tuple[float, float]]:
    """A slow cost (1 s + 18 ms/item) at 250 items, then a fast one (1 s + 10 ms/item) at 450
    with a probe at 300 every sixth batch, then the slow cost again: one batch at 450, then at 250."""
    slow = [(250.0, 1 + 0.018 * 250)] * 30
    fast = [(300.0, 1 + 0.01 * 300) if i % 6 == 5 else (450.0, 1 + 0.01 * 450) for i in range(30)]
    again = [(450.0, 1 + 0.018 * 450)] + [(250.0, 1 + 0.018 * 250)] * slow_after_switch
    return slow + fast + again


def test_a_cost_change_is_judged_against_the_regime_just_before_it_and_stays_found() -> None:
    # The batches at 250 after the switch have neighbours only in the older slow regime, which
    # the test must not pool: the change is the first batch at 450 that took 9.1 s, at index 60,
    # and it is still found 40 batches later.
    for after in (1, 5, 12, 40):
        assert cost_change_point(_alternating(after), EvidenceWindow) == 60, after


def test_noise_alone_is_no_cost_change() -> None:
    rng = random.Random(7)
    sizes = [200.0, 230.0, 260.0]
    timings = [(n, (1 + 0.01 * n) * math.exp(rng.gauss(0, 0.15))) for n in sizes * 50]
    assert cost_change_point(timings, EvidenceWindow) == 0


def test_the_pooled_test_finds_a_lasting_shift_at_sizes_every_regime_shares() -> None:
    rng = random.Random(11)
    sizes = [200.0, 230.0, 260.0]
    before = [(n, (1 + 0.01 * n) * math.exp(rng.gauss(0, 0.15))) for n in sizes * 30]
    after = [(n, 1.3 * (1 + 0.01 * n) * math.exp(rng.gauss(0, 0.15))) for n in sizes * 10]
    # A 1.3x cost under 15% noise: six batches after a split (the local test) are too few to
    # tell; the pooled test's evidence grows with every batch, and it cuts within the new cost.
    assert cost_change_point(before + after, EvidenceWindow) == 0
    assert len(before) <= pooled_change_point(before + after, EvidenceWindow) < len(before) + len(after)
    assert pooled_change_point(before, EvidenceWindow) == 0


def test_the_line_keeps_a_negative_fixed_cost_and_is_weighted_least_squares() -> None:
    rng = random.Random(2)
    sizes = [rng.choice([300.0, 340.0, 400.0]) for _ in range(20)]
    seconds = [0.02 * n * math.exp(rng.gauss(0, 0.1)) - 0.3 for n in sizes]
    line = fit_line(sizes, seconds)
    assert line is not None and line.fixed < 0  # fit_costs would drop the fixed term here
    # The same two passes with numpy: unweighted, then weights 1/predicted^2 (no outlier here).
    design = np.column_stack([np.ones(len(sizes)), sizes])
    first = np.linalg.lstsq(design, seconds, rcond=None)[0]
    root = 1.0 / (design @ first)
    expected = np.linalg.lstsq(design * root[:, None], np.array(seconds) * root, rcond=None)[0]
    assert (line.fixed, line.per_item) == pytest.approx(tuple(expected), rel=1e-6)
    # Its error at 150 items, far under the sizes fitted, is the line's, not a proportional one's.
    proportional = fit_costs(sizes, seconds)
    assert proportional is not None and proportional.fixed == 0.0
    line_error = line.seconds_upper(150, 1.0) / line.seconds(150) - 1
    assert line_error > 2 * (proportional.seconds_upper(150, 1.0) / proportional.seconds(150) - 1)
    assert fit_line([300.0] * 10, [6.0] * 10) is None  # one size determines no line


def _stepped(after: int, *, outlier: bool = False, seed: int = 4, size: float = 250.0) -> list[tuple[float, float]]:
    """A cost of 1 s + 10 ms/item at 450 items (a probe at 380 and 320 every sixth batch),
    then one batch at 450 far over and `after` batches at `size`: the per-item cost became
    18 ms, or (`outlier`) the batch far over was an outlier and the cost stayed."""
    rng = random.Random(seed)
    sizes = [(380.0, 320.0)[(i // 6) % 2] if i % 6 == 5 else 450.0 for i in range(40)]
    per_item = 0.01 if outlier else 0.018
    timings = [(n, (1 + 0.01 * n) * math.exp(rng.gauss(0, 0.1))) for n in sizes]
    timings.append((450.0, (1 + 0.018 * 450) * math.exp(rng.gauss(0, 0.1))))
    return timings + [(size, (1 + per_item * size) * math.exp(rng.gauss(0, 0.1))) for _ in range(after)]


def test_a_step_at_moved_sizes_is_found_at_the_surprising_batch_and_an_outlier_is_not() -> None:
    # After the batch far over, the manager shrinks: the batches at 250 have no neighbour of
    # the old cost, so the same-size tests cannot see the step; the fit before it can.
    assert cost_change_point(_stepped(6), EvidenceWindow) == 0
    assert step_change_point(_stepped(0), EvidenceWindow) == 0  # no batch after it yet: no verdict
    assert [step_change_point(_stepped(after), EvidenceWindow) for after in (3, 6, 30)] == [40, 40, 40]
    assert [step_change_point(_stepped(after, outlier=True), EvidenceWindow) for after in (1, 3, 6, 30)] == [0] * 4


def test_common_shift_is_the_generalised_least_squares_estimate() -> None:
    rng = np.random.default_rng(7)
    for count in (1, 2, 6, 40):
        residuals = rng.normal(0.3, 0.1, count)
        gradients = np.column_stack([np.ones(count), rng.uniform(0.3, 1.2, count), np.zeros(count)])
        factor = rng.normal(0, 0.1, (2, 2))
        covariance = np.zeros((3, 3))
        covariance[:2, :2] = factor @ factor.T  # a line's: no quadratic term
        sigma = 0.02 * np.eye(count) + gradients @ covariance @ gradients.T
        ones = np.ones(count)
        information = ones @ np.linalg.solve(sigma, ones)
        estimate, error = common_shift(list(residuals), gradients.tolist(), covariance.tolist(), 0.02)
        assert estimate == pytest.approx(ones @ np.linalg.solve(sigma, residuals) / information, rel=1e-9)
        assert error == pytest.approx(1 / math.sqrt(information), rel=1e-9)
    # Without a shared error it is the mean, with the standard error of a mean.
    assert common_shift([0.1, 0.3], [[1.0, 0.0, 0.0]] * 2, (), 0.02) == pytest.approx((0.2, 0.1))


def test_a_batch_far_over_stays_a_rise_under_test_until_the_batches_after_it_tell() -> None:
    def rise(timings: list[tuple[float, float]], threshold: float = 6.0) -> tuple[int, bool] | None:
        found = rise_under_test(timings, EvidenceWindow, threshold=threshold)
        return None if found is None else (found.index, found.confirmed)

    # Alone, the slow batch is the whole evidence; one batch of the new cost at 250 confirms it.
    assert [rise(_stepped(after)) for after in (0, 1, 3, 30)] == [(40, False)] + [(40, True)] * 3
    # An outlier, with the batches after it back at the old sizes, is ruled out at the second.
    assert [rise(_stepped(after, outlier=True, size=450.0)) for after in (1, 2, 3, 6)] == [(40, False)] + [None] * 3
    # At 250 the line before it extrapolates too far to tell: it stays under test.
    assert rise(_stepped(30, outlier=True)) == (40, False)
    # Not a rise: under the time limit, or beyond the sizes the line measured (a curving cost).
    assert rise(_stepped(2), threshold=10.0) is None
    assert rise([*_stepped(0)[:-1], (600.0, 12.0)]) is None


def test_the_rise_under_test_answers_the_same_with_the_step_tests_memo_as_without() -> None:
    timings = _stepped(12) + _stepped(20, outlier=True, seed=9)
    keys = [object() for _ in timings]
    memo = StepMemo()
    for count in range(2, len(timings) + 1):
        since = 30 if count % 3 else 0  # the other tests' cut comes and goes
        step_change_point(timings[:count], EvidenceWindow, keys=keys[:count], memo=memo, since=since)
        remembered = rise_under_test(timings[:count], EvidenceWindow, threshold=6.0, keys=keys[:count], memo=memo, since=since)
        assert remembered == rise_under_test(timings[:count], EvidenceWindow, threshold=6.0, since=since), count


def _window_of(timings: list[tuple[float, float]]) -> EvidenceWindow:
    views = [BatchView(asked=int(n), items=int(n), high=int(n), seconds=t, failed=False) for n, t in timings]
    config = ScalingConfig(initial_batch_size=50, min_batch_size=10, max_batch_size=800, processing_time_threshold=6.0)
    return EvidenceWindow.of(views, config, base=int(timings[-1][0]))


def test_a_rise_under_test_cuts_the_cost_evidence_unless_the_regime_has_shown_outliers() -> None:
    # A batch 1.4 times as slow as the cost at 450 (3.4 spreads): too little for the same-size
    # tests, followed by two batches of the old cost at 250, where the line cannot tell.
    pending = _stepped(2, outlier=True)
    pending[40] = (450.0, 1.4 * 5.5)
    window = _window_of(pending)
    assert window.rise is not None and not window.rise.confirmed
    assert window.timings == pending[41:]  # only the batches after the slow one
    assert window.metrics["rise_under_test_batches_ago"] == 3
    # One batch three times as slow as its neighbours among the 40 before: outliers happen here.
    heavy_tailed = [*pending[:20], (450.0, pending[20][1] * 3), *pending[21:]]
    window = _window_of(heavy_tailed)
    assert window.rise is None and "rise_under_test_batches_ago" not in window.metrics
    assert window.timings[-3:] == heavy_tailed[-3:] and len(window.timings) > 3


def test_the_step_test_answers_the_same_with_its_memo_as_without() -> None:
    timings = _stepped(30) + _stepped(20, outlier=True, seed=9)
    keys = [object() for _ in timings]
    memo = StepMemo()
    answers = []
    for count in range(2, len(timings) + 1):
        remembered = step_change_point(timings[:count], EvidenceWindow, keys=keys[:count], memo=memo)
        assert remembered == step_change_point(timings[:count], EvidenceWindow), count
        answers.append(remembered)
    assert 40 in answers  # the step was found on the way
    assert len(memo) <= 2 * EvidenceWindow.CHANGE_SCAN + 1


def _risen_again(seed: int, *, after: int = 6) -> list[tuple[float, float]]:
    """30 batches of a cost of 1 s + 18 ms/item at about 260 items, 15 of 10 ms/item at 450
    (a probe at 380 and 320 every sixth), one batch at 450 far over and `after` batches at 250:
    the per-item cost rose back to 18 ms."""
    rng = random.Random(seed)
    slow = [(rng.choice([240.0, 260.0, 280.0]), 0.018) for _ in range(30)]
    fast = [((380.0, 320.0)[(i // 6) % 2] if i % 6 == 5 else 450.0, 0.01) for i in range(15)]
    timings = [(n, (1 + c * n) * math.exp(rng.gauss(0, 0.1))) for n, c in slow + fast]
    timings.append((450.0, (1 + 0.018 * 450) * math.exp(rng.gauss(0, 0.1))))
    return timings + [(250.0, (1 + 0.018 * 250) * math.exp(rng.gauss(0, 0.1))) for _ in range(after)]


def test_a_step_reference_begins_no_earlier_than_a_change_found_already() -> None:
    timings = _risen_again(0)
    keys = [object() for _ in timings]
    memo = StepMemo()
    step_change_point(timings, EvidenceWindow, keys=keys, memo=memo, since=30)
    for split in range(31, len(timings) - 1):
        first = keys[max(split - EvidenceWindow.CHANGE_REFERENCE, 30)]
        assert all(entry.first is first for entry in memo.values() if entry.key is keys[split]), split
        assert memo[(id(keys[split]), id(first))].key is keys[split], split
    # A reference across the fall mixes both costs: its spread hides the rise after it.
    found = [
        (step_change_point(timings, EvidenceWindow), step_change_point(timings, EvidenceWindow, since=30))
        for timings in (_risen_again(seed) for seed in range(20))
    ]
    assert sum(across == 45 for across, _ in found) == 0
    assert sum(since == 45 for _, since in found) == 7


def test_the_step_test_answers_the_same_with_its_memo_when_the_change_before_moves() -> None:
    timings = _risen_again(1, after=20)
    keys = [object() for _ in timings]
    memo = StepMemo()
    for count in range(2, len(timings) + 1):
        since = 30 if count % 3 else 0  # the other tests' cut comes and goes
        remembered = step_change_point(timings[:count], EvidenceWindow, keys=keys[:count], memo=memo, since=since)
        assert remembered == step_change_point(timings[:count], EvidenceWindow, since=since), count


def test_the_step_test_skips_the_splits_it_knows_are_no_step_and_answers_the_same() -> None:
    # A long history seen through a sliding window of 150 batches, as the manager hands it
    # in: grown by a batch, or moved by one, or by two when a batch failed; a cut that comes
    # and goes; two steps of the cost and noisy batches between.
    rng = random.Random(5)
    timings = [
        (n, (1 + c * n) * math.exp(rng.gauss(0, 0.1)))
        for n, c in (
            (rng.choice([240.0, 260.0, 280.0, 320.0]), 0.01 if 120 <= i < 260 else 0.018) for i in range(400)
        )
    ]
    keys = [object() for _ in timings]
    memo = StepMemo()
    skipped = found = 0
    end = 2
    while end <= len(timings):
        begin = max(end - 150, 0) + (end % 7 == 0)
        since = 40 if end % 11 < 4 else 0
        batch_timings, batch_keys = timings[begin:end], keys[begin:end]
        remembered = step_change_point(batch_timings, EvidenceWindow, keys=batch_keys, memo=memo, since=since)
        assert remembered == step_change_point(batch_timings, EvidenceWindow, since=since), end
        skipped += memo.clean is not None and memo.clean.length > 1
        found += remembered > 0
        end += 1
    assert found > 0  # the steps were found on the way
    assert skipped > 200  # and most calls skipped the splits known to be no step


def test_the_cost_shift_test_skips_the_splits_it_knows_show_no_shift_and_answers_the_same() -> None:
    # Costs that alternate every 60 batches at shared sizes, seen through a window that grows,
    # then slides (by two when a batch failed), as the manager hands it in.
    rng = random.Random(8)
    timings = [
        (n, (1 + (0.018 if (i // 60) % 2 else 0.01) * n) * math.exp(rng.gauss(0, 0.1)))
        for i, n in enumerate(rng.choice([240.0, 260.0, 280.0]) for _ in range(400))
    ]
    keys = [object() for _ in timings]
    memo = ShiftMemo()
    answers = []
    for end in range(2, len(timings) + 1):
        begin = max(end - 100, 0) + (end % 7 == 0)
        remembered = cost_change_point(timings[begin:end], EvidenceWindow, keys=keys[begin:end], memo=memo)
        assert remembered == cost_change_point(timings[begin:end], EvidenceWindow), end
        answers.append((remembered, memo.clean is not None and memo.clean.length > 1))
    assert sum(found > 0 for found, _ in answers) > 50  # the changes were found
    assert sum(skipping for _, skipping in answers) > 100  # most calls between them skipped the scan


def test_the_quality_shift_test_carries_its_sums_between_calls_and_answers_the_same() -> None:
    # The High share alternates between 0.95 and 0.85 every 70 batches at sizes the batches
    # share; at 100 items it is 1 for 250 batches (a bucket whose variance is exactly zero,
    # alone after a split when the batches after it are all of that size), then 0.97. The
    # window grows, slides, sometimes loses up to three batches at once from the front and
    # sometimes gains none (a failed batch), as the manager hands it in.
    rng = random.Random(5)
    observations: list[tuple[float, int, int]] = []
    for i in range(500):
        size = rng.choice([100.0, 100.0, 100.0, 120.0, 150.0, 180.0])
        share = (1.0 if i < 250 else 0.97) if size == 100.0 else 0.85 if (i // 70) % 2 else 0.95
        items = int(size)
        observations.append((size, sum(rng.random() < share for _ in range(items)), items))
    keys = [object() for _ in observations]
    memo = QualityMemo()
    found = carried = 0
    begin = 0
    for end in range(1, len(observations) + 1):
        if end % 11 == 0:
            continue  # no new batch this call
        begin = max(begin, end - 150) + (end % 37 == 0) * 3
        window = slice(begin, end)
        updates = memo.updates
        remembered = quality_change_point(observations[window], EvidenceWindow, keys=keys[window], memo=memo)
        assert remembered == quality_change_point(observations[window], EvidenceWindow), end
        found += remembered > 0
        carried += memo.updates == updates + 1
    assert found > 100  # the shifts were found
    assert carried > 350  # most calls updated the sums instead of rebuilding them


def test_the_pooled_shift_test_carries_its_sums_between_calls_and_answers_the_same() -> None:
    # A per-item cost that drifts up by a tenth every 80 batches at sizes every regime
    # shares, one size always as fast (a bucket whose log seconds never vary); the window
    # grows, slides, loses up to three batches at once from the front and sometimes gains
    # none, and a cut found by another test comes and goes (`newer_than`).
    rng = random.Random(6)
    timings = []
    for i in range(500):
        n = rng.choice([100.0, 130.0, 170.0, 220.0])
        timings.append((n, 2.0 if n == 100.0 else (1 + 0.01 * 1.1 ** (i // 80) * n) * math.exp(rng.gauss(0, 0.1))))
    keys = [object() for _ in timings]
    memo = PooledMemo()
    found = carried = 0
    begin = 0
    for end in range(2, len(timings) + 1):
        if end % 13 == 0:
            continue
        begin = max(begin, end - 150) + (end % 41 == 0) * 3
        window, newer_than = slice(begin, end), (end - begin) // 3 if end % 5 == 0 else 0
        updates = memo.updates
        remembered = pooled_change_point(
            timings[window], EvidenceWindow, newer_than=newer_than, keys=keys[window], memo=memo
        )
        assert remembered == pooled_change_point(timings[window], EvidenceWindow, newer_than=newer_than), end
        found += remembered > 0
        carried += memo.updates == updates + 1
    assert found > 50  # the drift was found
    assert carried > 350  # most calls updated the sums instead of rebuilding them


def test_a_stretch_of_heavy_items_is_no_step_of_the_cost() -> None:
    sizes, weights, seconds = _weighed_sample(2e-5, count=40)
    # Then 6 batches of items nine times as heavy: slower, as the weighted fit predicts.
    heavy = [(100.0, 100 * 2200.0, 1.0 + 0.002 * 100 + 2e-5 * 100 * 2200.0)] * 6
    timings = [(n, t) for n, t in zip(sizes, seconds)] + [(n, t) for n, _, t in heavy]
    all_weights = [*weights, *(w for _, w, _ in heavy)]
    assert step_change_point(timings, EvidenceWindow, weights=all_weights) == 0
    assert step_change_point(timings, EvidenceWindow) >= len(sizes)  # counted in items alone, it is one


def _columns_of(columns: EvidenceColumns) -> dict[str, object]:
    """The columns as plain lists (the quality pools check what they carry by themselves)."""
    return {
        name: value.tolist() if isinstance(value, np.ndarray) else value
        for name in EvidenceColumns.__slots__
        if name != "pools"
        for value in [getattr(columns, name)]
    }


def test_the_window_columns_carried_between_calls_are_those_of_the_batches() -> None:
    # Batches that failed whole (no evidence) and that took no time (evidence, no timing)
    # among timed ones; the window slides, grows, loses a few at once and gains none.
    rng = random.Random(4)
    views = []
    for _ in range(400):
        kind = rng.random()
        n = rng.choice([80, 100, 120])
        seconds = 0.0 if kind < 0.05 else 1 + 0.01 * n
        views.append(BatchView(asked=n, items=n, high=int(0.9 * n), seconds=seconds, failed=0.05 <= kind < 0.1))
    numbers = [EvidenceWindow.numbers(view) for view in views]
    carried = EvidenceColumns()
    moved = 0
    begin = 0
    for end in range(1, len(numbers) + 1):
        if end % 9 == 0:
            continue
        begin = max(begin, end - EvidenceWindow.EVIDENCE) + (end % 31 == 0) * 2
        timings = carried.timings
        carried.update(numbers[begin:end])
        fresh = EvidenceColumns().update(numbers[begin:end])
        assert _columns_of(carried) == _columns_of(fresh), end
        moved += carried.timings is timings  # moved in place, not rebuilt
    assert moved > 300  # most calls moved the columns rather than rebuilt them
    assert len(fresh.timings) < len(fresh.quality) < len(fresh.numbers)  # the three kinds were there


def test_the_window_is_the_same_with_the_per_batch_numbers_handed_in_or_computed() -> None:
    rng = random.Random(3)
    sizes = [rng.choice([200, 230, 260, 300]) for _ in range(150)]
    # The per-item cost rises from 10 to 18 ms at batch 90.
    seconds = [(1 + (0.018 if i >= 90 else 0.01) * n) * math.exp(rng.gauss(0, 0.15)) for i, n in enumerate(sizes)]
    views = [BatchView(asked=n, items=n, high=int(0.95 * n), seconds=t, failed=False) for n, t in zip(sizes, seconds)]
    config = ScalingConfig()
    computed = EvidenceWindow.of(views, config, base=260)
    handed = EvidenceWindow.of(views, config, base=260, numbers=[EvidenceWindow.numbers(view) for view in views])
    assert computed.metrics.get("cost_change_batches_ago") is not None  # the change at batch 90 is cut
    assert (handed.timings, handed.quality, handed.fit, handed.noise) == (
        computed.timings,
        computed.quality,
        computed.fit,
        computed.noise,
    )
    assert handed.metrics == computed.metrics


def test_a_carried_quality_pool_is_the_one_built_afresh() -> None:
    # Few distinct sizes, so that batches of one size come and go in every order; the
    # stretch grows, slides by one, loses a few at once, and is sometimes another one.
    rng = random.Random(9)
    sizes = rng.choices([50, 60, 70, 80], k=500)
    views = [BatchView(asked=n, items=n, high=rng.randint(0, n), seconds=1.0, failed=False) for n in sizes]
    observations = [(float(view.asked), view.high, view.items) for view in views]
    carrier = PoolCarrier()
    begin = moved = 0
    for end in range(1, len(views) + 1):
        begin = max(begin, end - 150) + (end % 37 == 0) * 3
        start = begin if end % 101 else end // 2  # another stretch now and then
        target = 0.5 if end < 400 else 0.6  # a new target is a new pool
        moved += slid(carrier.keys, views[start:end], PoolCarrier.MAX_DROPPED) is not None and end != 400
        pool = carrier.pool(observations[start:end], views[start:end], target)
        fresh = QualityPool.of(observations[start:end])
        assert (pool.sizes, pool.highs, pool.items) == (fresh.sizes, fresh.highs, fresh.items), end
        assert (pool.cumulative_high, pool.cumulative_items) == (fresh.cumulative_high, fresh.cumulative_items), end
        assert pool.distinct_sizes() == fresh.distinct_sizes() and pool.between(55, 75) == fresh.between(55, 75), end
        assert pool.low is not None and pool.low_sizes(target) == fresh.low_sizes(target), end
    assert moved > 450  # most calls moved the sorted columns rather than sorted them again


def test_a_batch_timed_at_the_smallest_float_is_judged_without_a_domain_error() -> None:
    # 5e-324 s over a prediction of seconds underflows to a ratio of 0: its log residual is
    # floored at log(1e-300), as the window floors a shock's, instead of raising.
    fit = fit_line([10.0, 20.0, 30.0, 40.0, 50.0], [1.1, 1.2, 1.3, 1.4, 1.5])
    assert fit is not None
    reference = StepReference(fit, 0.01, -1)
    after = [(20.0, 5e-324), (20.0, 1.2), (20.0, 1.2), (20.0, 1.2), (20.0, 1.2), (20.0, 1.2)]
    measured = _residuals(reference, after)
    assert measured is not None and measured[0][0] == math.log(1e-300)
    # Clipped to the others' spread, one such batch among six confirms no step down.
    assert _confirmed(reference, after, EvidenceWindow) is False


def test_noise_free_costs_are_fitted_by_their_shape_not_by_rounding() -> None:
    # On exact points the residual sums are rounding, which the order of the sums decides:
    # they count as 0, so a line stays a line and a curve is certain.
    rng = random.Random(5)
    for _ in range(200):
        sizes = [float(rng.choice([20, 30, 68, 102, 153, 230, 270, 327, 385])) for _ in range(rng.randint(8, 150))]
        if len(set(sizes)) < 4:
            continue
        line = fit_costs(sizes, [1.0 + 0.01 * n for n in sizes], curvature_t=2.0, half_life=40.0, outlier_cutoff=None)
        assert line is not None and line.quadratic == 0.0
        curve = fit_costs(sizes, [1.0 + 0.01 * n + 2e-5 * n * n for n in sizes], curvature_t=2.0)
        assert curve is not None and curve.quadratic == pytest.approx(2e-5) and curve.curvature_t == math.inf
