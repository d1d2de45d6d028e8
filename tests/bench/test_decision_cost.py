"""The benchmark's measurement of what a decision costs."""

from __future__ import annotations

from bench.policies import MANAGER
from bench.run import _decision_history, _warmed, measure_decision_cost
from bench.workloads import get_workload


def test_a_pass_warmed_on_the_last_batches_decides_as_one_that_saw_every_batch() -> None:
    # The manager reads its last 400 batches: warmed on those alone, its next decisions are
    # those of a manager that decided after every batch from the first.
    workload = get_workload("quality-knee")
    full = _decision_history(workload, 900)
    decisions = []
    for warm_calls in (800, 400):
        policy, history = _warmed(MANAGER, workload, full[:800], warm_calls)
        assert history == full[:800]
        made = []
        for result in full[800:]:
            history.append(result)
            decision = policy.evaluate_scaling(history)
            made.append((decision.new_batch_size, decision.reason, decision.max_weight))
            policy.apply_scaling_decision(decision)
        decisions.append(made)
    assert decisions[0] == decisions[1]
    assert len({size for size, _, _ in decisions[0]}) > 1  # the sizes move: the comparison can fail


def test_the_decision_cost_is_a_positive_mean_over_the_timed_calls() -> None:
    seconds = measure_decision_cost(
        MANAGER, get_workload("superlinear-cost"), history_length=300, timed_calls=20, passes=2, warm_calls=50
    )
    assert 0.0 < seconds < 1.0
