"""The bench's weighed items, token budgets and cost budgets."""

from __future__ import annotations

import itertools
import random

import pytest

from bench.policies import build_policy
from bench.simulator import (
    ItemWeights,
    Phase,
    find_oracle,
    sample_batch,
    simulate,
    weighed_batch,
)
from bench.workloads import get_workload

WEIGHTS = [3.0, 4.0, 10.0, 1.0, 1.0, 2.0, 9.0, 1.0]
PREFIX = [0.0, *itertools.accumulate(WEIGHTS)]


def test_a_batch_takes_items_in_order_within_the_weight_budget_as_the_store_claims_them() -> None:
    # The same walk as tests/scaling_core/store/test_weights.py, claim by claim.
    start, batches = 0, []
    for asked in (5, 5, 2, 5, 5, 5):
        items, weight = weighed_batch(PREFIX, start, asked, 8.0)
        batches.append((items, weight))
        start += items
    assert batches == [(2, 7.0), (1, 10.0), (2, 2.0), (1, 2.0), (1, 9.0), (1, 1.0)]
    assert weighed_batch(PREFIX, 0, 5, None) == (5, 19.0)
    assert weighed_batch(PREFIX, 6, 5, None) == (2, 10.0)


def test_item_weights_are_heavy_tailed_whole_units_within_bounds_and_a_function_of_the_seed() -> None:
    weights = ItemWeights(median=250, sigma=1.0, max_weight=8_192)
    drawn = weights.draw(random.Random(1), 20_000)
    assert drawn == weights.draw(random.Random(1), 20_000)
    assert all(1 <= w <= 8_192 and w == int(w) for w in drawn)
    assert sorted(drawn)[10_000] == pytest.approx(250, rel=0.05)
    assert sum(drawn) / len(drawn) == pytest.approx(250 * 1.6487, rel=0.05)  # e^(1/2)


def test_a_weighed_batch_costs_its_tokens_and_carries_its_weight() -> None:
    phase = Phase(fixed_s=1.0, per_item_s=0.01, per_weight_s=0.001, noise_sigma=0.0, q0=0.9)
    sampled = sample_batch(phase, batch_id="b", asked=10, items=10, rng=random.Random(0), weight=500.0)
    assert sampled.result.processing_time == pytest.approx(1.0 + 0.1 + 0.5)
    assert sampled.expected_time_s == pytest.approx(1.6)
    assert sampled.result.total_weight == 500.0


@pytest.mark.parametrize("policy", ["manager", "fixed", "aimd"])
def test_a_cost_budget_stops_the_run_before_it_would_be_passed(policy: str) -> None:
    workload = get_workload("cost-budget")
    assert workload.budget is not None and workload.budget.max_cost is not None
    outcome = simulate(workload, build_policy(policy, workload, 0), 0, policy_name=policy)
    assert outcome.budget_stopped and not outcome.truncated and not outcome.over_budget
    assert outcome.spent is not None and workload.budget.max_cost - 0.05 < outcome.spent <= workload.budget.max_cost
    assert 0 < outcome.delivered < workload.total_items
    oracle = find_oracle(workload)
    assert outcome.oracle_time == pytest.approx(oracle.phases[0].seconds_per_success * outcome.delivered)


def test_the_token_budget_binds_every_batch_of_the_oracle_size() -> None:
    workload = get_workload("token-budget")
    cap = workload.config.max_batch_weight
    assert cap is not None
    outcome = simulate(workload, build_policy("oracle", workload, 0), 0, policy_name="oracle")
    assert all(result.total_weight is not None for result in outcome.history)
    assert all(r.total_items == 1 or (r.total_weight or 0.0) <= cap for r in outcome.history)
    # Most batches stop short of the asked size: the tokens bind, not the size.
    short = sum(1 for r in outcome.history if r.total_items < r.asked_size)
    assert short > 0.9 * len(outcome.history)
