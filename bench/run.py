"""Run the batch-size benchmark: every workload x policy x seed, verdicts and decision cost.

Usage::

    python -m bench                      # manager + all peers, 5 seeds
    python -m bench --policies fixed,classic,aimd,beam,binsearch
    python -m bench --workloads quality-knee,cold-start --seeds 3 --markdown --json out.json

Per workload and policy it reports, over the seeds:

* time / oracle: total time of the run over the oracle time (mean, and worst seed);
* low-quality share: share of successful items delivered by batches whose TRUE expected High
  share was below the target minus 0.02;
* whole failures: number of batches that failed whole for their size (at a cliff); transient
  failures and a broken processor's spell hit every policy alike and are not counted;
* slow share: share of successful items delivered by batches whose TRUE expected time was
  more than 5% over the time limit (the objective's time constraint; without it a policy
  could beat the oracle by ignoring the limit);
* 429 share: calls refused for a rate limit / all calls (on the rate-limited workloads; the
  package's stage waits and retries a 429, a peer sees it as a batch that failed whole);
* late median: median asked size over the second half of the run, by batch count.

On a rate-limited workload the bench also prints each policy's items per second against the
best fixed pacing.

A policy PASSES a workload when the MEAN time ratio is <= 1.10 (1.20 for a job of a few
hundred items, which cannot repay any exploration; `Workload.max_time_ratio`) (the cost of a
run is an average matter, and one unlucky seed should not decide it) and, on the WORST seed,
the low-quality share is <= 0.05, the slow share is <= 0.05, the 429 share is <= 0.05 and there are <= 3 whole failures
(breaking a constraint is a matter of the worst case). Where no size meets a constraint in a
phase, the oracle and the verdict ignore that constraint there. On a workload with a cost
budget, no seed may spend more than the budget ("budget"), and a run the budget stops is
measured against the oracle time of the items it delivered.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from bench.policies import (
    DEFAULT_POLICIES,
    MANAGER,
    ORACLE,
    build_policy,
    known_policies,
    manager_available,
)
from bench.simulator import (
    DEFAULT_MAX_TIME_RATIO,
    Policy,
    RunMetrics,
    RunOutcome,
    Workload,
    find_oracle,
    sample_batch,
    simulate,
    stable_seed,
)
from bench.workloads import WORKLOADS, get_workload, workload_names
from scaling_core.results import BatchResult

__all__ = ["Aggregate", "Criteria", "RunError", "main", "measure_decision_cost", "run_one", "sizes_digest"]


class Criteria:
    """What a policy must achieve on a workload to PASS (see the module docstring)."""

    MAX_TIME_RATIO = DEFAULT_MAX_TIME_RATIO
    MAX_LOW_QUALITY_SHARE = 0.05
    MAX_WHOLE_FAILURES = 3
    MAX_SLOW_SHARE = 0.05
    MAX_REFUSED_SHARE = 0.05
    """Calls refused for a rate limit (429) / all calls, on the worst seed: a few percent while
    the limit is learned; more is hammering the provider."""
    DECISION_COST_TARGET_MS = 1.0
    DECISION_HISTORY = 2_000
    DECISION_TIMED_CALLS = 200
    DECISION_WARM_CALLS = 400
    """Calls a pass makes one by one, untimed, before the timed ones (the history before them
    is handed in at once): the manager reads at most its last 400 batches
    (`ScalingManager.HISTORY`), so that it is then in the state a whole run would leave."""
    DECISION_PASSES = 10
    """Passes, the best reported (as `timeit` does): other work on a shared machine slows a
    single pass by up to half, from one second to the next."""
    DECISION_WORKLOADS = ("quality-knee", "superlinear-cost")
    """Where the decision cost is measured: a linear cost, and a curved one."""


@dataclass(frozen=True)
class RunError:
    """A run that raised: the policy fails the workload with this message."""

    workload: str
    policy: str
    seed: int
    message: str


@dataclass(frozen=True)
class Aggregate:
    """One workload x policy cell over all seeds."""

    workload: str
    policy: str
    runs: tuple[RunMetrics, ...]
    errors: tuple[RunError, ...]

    @property
    def mean_time_ratio(self) -> float:
        """Mean over seeds of total time / oracle time."""
        return statistics.fmean(r.time_ratio for r in self.runs) if self.runs else math.nan

    @property
    def worst_time_ratio(self) -> float:
        """Largest time ratio of any seed."""
        return max((r.time_ratio for r in self.runs), default=math.nan)

    @property
    def mean_low_quality(self) -> float:
        """Mean over seeds of the low-quality share."""
        return statistics.fmean(r.low_quality_share for r in self.runs) if self.runs else math.nan

    @property
    def worst_low_quality(self) -> float:
        """Largest low-quality share of any seed."""
        return max((r.low_quality_share for r in self.runs), default=math.nan)

    @property
    def mean_failures(self) -> float:
        """Mean over seeds of the whole-batch failures."""
        return statistics.fmean(r.whole_failures for r in self.runs) if self.runs else math.nan

    @property
    def worst_failures(self) -> int:
        """Most whole-batch failures of any seed."""
        return max((r.whole_failures for r in self.runs), default=0)

    @property
    def mean_slow(self) -> float:
        """Mean over seeds of the slow share."""
        return statistics.fmean(r.slow_share for r in self.runs) if self.runs else math.nan

    @property
    def worst_slow(self) -> float:
        """Largest slow share of any seed."""
        return max((r.slow_share for r in self.runs), default=math.nan)

    @property
    def mean_late_median(self) -> float:
        """Mean over seeds of the median size in the second half of the run."""
        return statistics.fmean(r.late_median_size for r in self.runs) if self.runs else math.nan

    @property
    def mean_refused(self) -> float:
        """Mean over seeds of the share of calls refused for the rate limit (429)."""
        return statistics.fmean(r.refused_share for r in self.runs) if self.runs else math.nan

    @property
    def worst_refused(self) -> float:
        """Largest share of refused calls of any seed."""
        return max((r.refused_share for r in self.runs), default=math.nan)

    @property
    def mean_items_per_second(self) -> float:
        """Mean over seeds of the successful items per second."""
        return statistics.fmean(r.items_per_second for r in self.runs) if self.runs else math.nan

    @property
    def truncated_runs(self) -> int:
        """Runs stopped by the batch cap."""
        return sum(1 for r in self.runs if r.truncated)

    @property
    def out_of_bounds(self) -> int:
        """Batches, over all seeds, whose size lay outside [min, max]."""
        return sum(r.out_of_bounds for r in self.runs)

    @property
    def over_budget_runs(self) -> int:
        """Runs that spent more than the workload's cost budget."""
        return sum(1 for r in self.runs if r.over_budget)

    def failed_criteria(self) -> list[str]:
        """Names of the criteria this cell breaks; empty means PASS."""
        if self.errors:
            return ["error"]
        failed: list[str] = []
        if self.mean_time_ratio > get_workload(self.workload).max_time_ratio:
            failed.append("time")
        if self.worst_low_quality > Criteria.MAX_LOW_QUALITY_SHARE:
            failed.append("quality")
        if self.worst_failures > Criteria.MAX_WHOLE_FAILURES:
            failed.append("failures")
        if self.worst_slow > Criteria.MAX_SLOW_SHARE:
            failed.append("slow")
        if self.worst_refused > Criteria.MAX_REFUSED_SHARE:
            failed.append("429s")
        if self.truncated_runs:
            failed.append("capped")
        if self.over_budget_runs:
            failed.append("budget")
        return failed

    @property
    def passed(self) -> bool:
        """True when no criterion is broken."""
        return not self.failed_criteria()

    def verdict(self) -> str:
        """PASS, or FAIL with the broken criteria."""
        failed = self.failed_criteria()
        return "PASS" if not failed else "FAIL " + ",".join(failed)

    def to_json(self) -> dict[str, object]:
        """Aggregate numbers, the verdict, and every run."""
        return {
            "mean_time_ratio": self.mean_time_ratio,
            "worst_time_ratio": self.worst_time_ratio,
            "mean_low_quality_share": self.mean_low_quality,
            "worst_low_quality_share": self.worst_low_quality,
            "mean_whole_failures": self.mean_failures,
            "worst_whole_failures": self.worst_failures,
            "mean_slow_share": self.mean_slow,
            "worst_slow_share": self.worst_slow,
            "mean_late_median_size": self.mean_late_median,
            "mean_refused_share": self.mean_refused,
            "worst_refused_share": self.worst_refused,
            "mean_items_per_second": self.mean_items_per_second,
            "truncated_runs": self.truncated_runs,
            "over_budget_runs": self.over_budget_runs,
            "out_of_bounds_batches": self.out_of_bounds,
            "passed": self.passed,
            "failed_criteria": self.failed_criteria(),
            "runs": [asdict(run) for run in self.runs],
            "errors": [asdict(error) for error in self.errors],
        }


def run_one(task: tuple[str, str, int]) -> RunMetrics | RunError:
    """Run one (workload, policy, seed); top-level so that worker processes can pickle it."""
    workload_name, policy_name, seed = task
    workload = get_workload(workload_name)
    try:
        policy = build_policy(policy_name, workload, seed)
        outcome: RunOutcome = simulate(workload, policy, seed, policy_name=policy_name)
    except Exception as exc:  # a crashing policy fails its cell; the bench goes on
        return RunError(workload_name, policy_name, seed, f"{type(exc).__name__}: {exc}")
    return outcome.metrics()


def _decision_history(workload: Workload, length: int) -> list[BatchResult]:
    # Sizes wander log-normally around the oracle size, so that a model has spread to fit.
    rng = random.Random(stable_seed(workload.name, "decision-cost"))
    centre = find_oracle(workload).phases[0].size
    config = workload.config
    history: list[BatchResult] = []
    delivered = 0
    for index in range(length):
        size = config.clamp(centre * math.exp(rng.gauss(0.0, 0.35)))
        phase = workload.phases[workload.phase_index_at(delivered % workload.total_items)]
        sampled = sample_batch(phase, batch_id=f"cost-{index}", asked=size, items=size, rng=rng)
        history.append(sampled.result)
        delivered += sampled.result.successful_items
    return history


def _warmed(
    policy_name: str, workload: Workload, history: Sequence[BatchResult], warm_calls: int
) -> tuple[Policy, list[BatchResult]]:
    """A fresh policy that was handed `history` less its last `warm_calls` batches in one
    call, then those one by one through the protocol; and the history it has seen."""
    policy = build_policy(policy_name, workload, 0)
    warm_from = max(len(history) - warm_calls, 0)
    seen = list(history[:warm_from])
    if seen:
        policy.apply_scaling_decision(policy.evaluate_scaling(seen))
    for result in history[warm_from:]:
        seen.append(result)
        policy.apply_scaling_decision(policy.evaluate_scaling(seen))
    return policy, seen


def measure_decision_cost(
    policy_name: str,
    workload: Workload,
    *,
    history_length: int = Criteria.DECISION_HISTORY,
    timed_calls: int = Criteria.DECISION_TIMED_CALLS,
    passes: int = Criteria.DECISION_PASSES,
    warm_calls: int = Criteria.DECISION_WARM_CALLS,
) -> float:
    """Mean seconds per `evaluate_scaling` call over the last `timed_calls` of a long history,
    the best of `passes` passes.

    The policy is first handed the history up to `warm_calls` batches before the timed ones
    in one call, then sees those batches one by one through the normal protocol (untimed),
    so that a policy which keeps state is measured in its steady state. Each pass starts a
    fresh policy on the same history; the best pass is the one the machine's other work
    disturbed least (as `timeit` reports).
    """
    full = _decision_history(workload, history_length)
    timed_from = history_length - timed_calls
    best = math.inf
    for _ in range(passes):
        policy, history = _warmed(policy_name, workload, full[:timed_from], warm_calls)
        spent = 0.0
        for result in full[timed_from:]:
            history.append(result)
            start = time.perf_counter()
            decision = policy.evaluate_scaling(history)
            spent += time.perf_counter() - start
            policy.apply_scaling_decision(decision)
        best = min(best, spent / timed_calls)
    return best


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Batch-size benchmark: every workload x policy x seed against the oracle.",
    )
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds, 0..N-1 (default 5)")
    parser.add_argument(
        "--workloads",
        type=_split,
        default=None,
        help=f"comma list (default all): {','.join(workload_names())}",
    )
    parser.add_argument(
        "--policies",
        type=_split,
        default=None,
        help=f"comma list (default {','.join(DEFAULT_POLICIES)}); known: {','.join(known_policies())}",
    )
    parser.add_argument("--markdown", action="store_true", help="print the tables as GitHub markdown")
    parser.add_argument(
        "--json", dest="json_path", default=None, help="also write all results to this JSON file"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="worker processes (default min(2, CPUs))",
    )
    parser.add_argument(
        "--skip-decision-cost",
        action="store_true",
        help="do not time evaluate_scaling on a 2,000-batch history",
    )
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    for name in args.workloads or []:
        if name not in workload_names():
            parser.error(f"unknown workload {name!r}; known: {', '.join(workload_names())}")
    for name in args.policies or []:
        if name not in known_policies():
            parser.error(f"unknown policy {name!r}; known: {', '.join(known_policies())}")
    return args


def _run_all(tasks: list[tuple[str, str, int]], jobs: int) -> list[RunMetrics | RunError]:
    if jobs == 1 or len(tasks) == 1:
        return [run_one(task) for task in tasks]
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(processes=jobs) as pool:
        return list(pool.imap(run_one, tasks, chunksize=1))


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _cells(agg: Aggregate) -> list[str]:
    return [
        agg.policy,
        f"{_fmt(agg.mean_time_ratio)} ({_fmt(agg.worst_time_ratio)})",
        f"{_fmt(agg.mean_low_quality)} ({_fmt(agg.worst_low_quality)})",
        f"{_fmt(agg.mean_failures, 1)} ({agg.worst_failures})",
        f"{_fmt(agg.mean_slow)} ({_fmt(agg.worst_slow)})",
        f"{_fmt(agg.mean_refused)} ({_fmt(agg.worst_refused)})",
        _fmt(agg.mean_late_median, 0),
        agg.verdict(),
    ]


_HEADERS = [
    "policy",
    "time/oracle mean (worst)",
    "low-q share mean (worst)",
    "failures mean (worst)",
    "slow share mean (worst)",
    "429 share mean (worst)",
    "late median",
    "verdict",
]


def _oracle_line(workload: Workload) -> str:
    oracle = find_oracle(workload)
    parts = []
    for optimum in oracle.phases:
        relaxed = f", ignoring {' and '.join(optimum.relaxed)}" if optimum.relaxed else ""
        start = workload.phases[optimum.phase_index].start_item
        where = f"from item {start}: " if len(oracle.phases) > 1 else ""
        parts.append(
            f"{where}{optimum.size} items ({1000 * optimum.seconds_per_success:.2f} ms/item{relaxed})"
        )
    line = f"oracle: {'; '.join(parts)}; oracle time {oracle.total_time:.0f} s"
    budget = workload.budget
    if budget is not None and budget.max_cost is not None:
        line += f"; cost budget ${budget.max_cost:g}"
    if workload.rate_limit is not None:
        line += f"; {workload.total_items / oracle.total_time:.2f} items/s at the best fixed pacing"
    return line


def _rate_line(workload: Workload, cells: dict[tuple[str, str], Aggregate], policies: list[str]) -> str:
    """Items per second of each policy against the best fixed pacing, on a rate-limited workload."""
    best = workload.total_items / find_oracle(workload).total_time
    rates = ", ".join(
        f"{policy} {_fmt(cells[(workload.name, policy)].mean_items_per_second, 2)} "
        f"({_fmt(cells[(workload.name, policy)].mean_items_per_second / best)})"
        for policy in policies
    )
    return f"items/s (share of the best fixed pacing, {best:.2f}): {rates}"


def _print_plain(
    workloads: list[Workload], cells: dict[tuple[str, str], Aggregate], policies: list[str]
) -> None:
    for workload in workloads:
        print(f"\n== {workload.name}: {workload.description}")
        print(f"   {_oracle_line(workload)}")
        rows = [_HEADERS] + [_cells(cells[(workload.name, p)]) for p in policies]
        widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADERS))]
        for row in rows:
            print("   " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if workload.rate_limit is not None:
            print(f"   {_rate_line(workload, cells, policies)}")
        for policy in policies:
            agg = cells[(workload.name, policy)]
            for error in agg.errors[:1]:
                print(f"   ! {policy} seed {error.seed} raised {error.message}")
            if agg.out_of_bounds:
                print(f"   ! {policy} asked for {agg.out_of_bounds} batch sizes outside [min, max]")
            spent = [r.spent for r in agg.runs if r.spent is not None]
            if spent:
                stopped = sum(1 for r in agg.runs if r.budget_stopped)
                print(
                    f"   $ {policy} spent ${statistics.fmean(spent):.2f} on average (most ${max(spent):.2f}); "
                    f"the budget stopped {stopped} of {len(agg.runs)} runs"
                )


def _print_markdown(
    workloads: list[Workload], cells: dict[tuple[str, str], Aggregate], policies: list[str]
) -> None:
    print("\n| workload | oracle size | " + " | ".join(policies) + " |")
    print("|---|---|" + "---|" * len(policies))
    for workload in workloads:
        sizes = " → ".join(str(o.size) for o in find_oracle(workload).phases)
        row = []
        for policy in policies:
            agg = cells[(workload.name, policy)]
            mark = "**PASS**" if agg.passed else "FAIL (" + ", ".join(agg.failed_criteria()) + ")"
            row.append(f"{mark} {_fmt(agg.mean_time_ratio)}")
        print(f"| {workload.name} | {sizes} | " + " | ".join(row) + " |")
    print("\n| workload | " + " | ".join(_HEADERS) + " |")
    print("|---|" + "---|" * len(_HEADERS))
    for workload in workloads:
        for policy in policies:
            print(f"| {workload.name} | " + " | ".join(_cells(cells[(workload.name, policy)])) + " |")


def sizes_digest(workloads: Sequence[Workload], cells: dict[tuple[str, str], Aggregate], policy: str) -> str:
    """SHA-256 (hex, first 16 digits) of `policy`'s size sequences over every workload and seed.

    Two runs that print the same digest chose the same sizes everywhere: a change that is
    meant to make decisions cheaper, not different, must keep it.
    """
    digest = hashlib.sha256()
    for workload in workloads:
        for run in sorted(cells[(workload.name, policy)].runs, key=lambda run: run.seed):
            digest.update(f"{workload.name}/{run.seed}:{run.sizes_digest};".encode())
    return digest.hexdigest()[:16]


def _summary(
    workloads: list[Workload], cells: dict[tuple[str, str], Aggregate], policies: list[str], manager_ran: bool
) -> dict[str, object]:
    print("\n== summary")
    failed_by_policy: dict[str, list[str]] = {}
    for policy in policies:
        failed = [w.name for w in workloads if not cells[(w.name, policy)].passed]
        failed_by_policy[policy] = failed
        detail = ", ".join(f"{name} ({','.join(cells[(name, policy)].failed_criteria())})" for name in failed)
        print(
            f"   {policy:<10} passes {len(workloads) - len(failed)}/{len(workloads)}"
            + (f"; fails {detail}" if detail else "")
        )
    for policy in policies:
        print(f"   {policy:<10} size sequences: {sizes_digest(workloads, cells, policy)}")
    passing_all = [p for p in policies if not failed_by_policy[p]]
    print(f"   policies passing every workload: {', '.join(passing_all) if passing_all else 'none'}")
    peers = [p for p in policies if p not in (MANAGER, ORACLE)]
    peers_passing_all = [p for p in peers if not failed_by_policy[p]]
    print("combined verdict:")
    if manager_ran:
        manager_ok = not failed_by_policy[MANAGER]
        print(
            f"   manager passes every workload: {'YES' if manager_ok else 'NO'}"
            + ("" if manager_ok else f" (fails {', '.join(failed_by_policy[MANAGER])})")
        )
    else:
        manager_ok = False
        print("   manager passes every workload: NOT RUN")
    peers_ok = bool(peers) and not peers_passing_all
    if peers:
        print(
            f"   every peer fails at least one workload: {'YES' if peers_ok else 'NO'}"
            + ("" if peers_ok else f" ({', '.join(peers_passing_all)} pass everything)")
        )
    else:
        print("   every peer fails at least one workload: NOT RUN")
    if manager_ran and peers:
        overall = "PASS" if manager_ok and peers_ok else "FAIL"
    else:
        overall = "INCOMPLETE (needs the manager and at least one peer)"
    print(f"   => {overall}")
    return {
        "failed_workloads": failed_by_policy,
        "policies_passing_all": passing_all,
        "manager_passes_all": manager_ok if manager_ran else None,
        "every_peer_fails_one": peers_ok if peers else None,
        "combined": overall,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bench`` / ``python -m bench.run``; always 0 unless the usage is wrong."""
    args = _parse_args(argv)
    workloads = [get_workload(name) for name in args.workloads] if args.workloads else list(WORKLOADS)
    policies = list(args.policies) if args.policies else list(DEFAULT_POLICIES)
    if MANAGER in policies and not manager_available():
        print("note: scaling_core.manager is not importable here; the manager is left out of this run")
        policies.remove(MANAGER)
    if not policies:
        print("nothing to run: no policy left")
        return 0
    seeds = list(range(args.seeds))
    started = time.perf_counter()
    print(
        f"batch-size bench: {len(workloads)} workloads x {len(policies)} policies x {len(seeds)} seeds, "
        f"{args.jobs} process{'es' if args.jobs > 1 else ''}"
    )
    print(
        f"PASS needs: mean time/oracle <= {Criteria.MAX_TIME_RATIO:.2f} (or the workload's own); on the worst seed: "
        f"low-quality share <= {Criteria.MAX_LOW_QUALITY_SHARE:.2f} (true High share < target - "
        f"{RunOutcome.QUALITY_TOLERANCE}), whole failures <= {Criteria.MAX_WHOLE_FAILURES}, slow share <= "
        f"{Criteria.MAX_SLOW_SHARE:.2f} (true E[T] > {1 + RunOutcome.TIME_TOLERANCE:.2f} x time limit), "
        f"429 share <= {Criteria.MAX_REFUSED_SHARE:.2f}"
    )
    tasks = [(w.name, p, s) for w in workloads for p in policies for s in seeds]
    results = _run_all(tasks, args.jobs)
    cells: dict[tuple[str, str], Aggregate] = {}
    for workload in workloads:
        for policy in policies:
            mine = [r for r in results if r.workload == workload.name and r.policy == policy]
            cells[(workload.name, policy)] = Aggregate(
                workload=workload.name,
                policy=policy,
                runs=tuple(r for r in mine if isinstance(r, RunMetrics)),
                errors=tuple(r for r in mine if isinstance(r, RunError)),
            )
    if args.markdown:
        for workload in workloads:
            oracle = _oracle_line(workload)
            print(f"\n- **{workload.name}**: {workload.description} {oracle[0].upper()}{oracle[1:]}.")
        _print_markdown(workloads, cells, policies)
    else:
        _print_plain(workloads, cells, policies)
    summary = _summary(workloads, cells, policies, manager_ran=MANAGER in policies)

    decision_cost: dict[str, float] = {}
    if not args.skip_decision_cost:
        # A linear cost and a curved one: the curved one also pays for the long cost fit.
        names = dict.fromkeys([workloads[0].name, *[n for n in Criteria.DECISION_WORKLOADS if n in workload_names()]])
        for cost_workload in (get_workload(name) for name in names):
            print(
                f"\n== decision cost: mean evaluate_scaling time over {Criteria.DECISION_TIMED_CALLS} calls "
                f"at a {Criteria.DECISION_HISTORY:,}-batch history, best of {Criteria.DECISION_PASSES} passes "
                f"({cost_workload.name})"
            )
            for policy in policies:
                try:
                    seconds = measure_decision_cost(policy, cost_workload)
                except Exception as exc:
                    print(f"   {policy:<10} raised {type(exc).__name__}: {exc}")
                    continue
                decision_cost[f"{policy}/{cost_workload.name}"] = seconds
                ms = 1000 * seconds
                note = ""
                if policy == MANAGER:
                    ok = ms < Criteria.DECISION_COST_TARGET_MS
                    note = f"  (target < {Criteria.DECISION_COST_TARGET_MS:g} ms: {'OK' if ok else 'OVER'})"
                print(f"   {policy:<10} {ms:.4f} ms/call{note}")
    print(f"\nbench took {time.perf_counter() - started:.1f} s")

    if args.json_path:
        payload = {
            "criteria": {
                "max_time_ratio": Criteria.MAX_TIME_RATIO,
                "max_low_quality_share": Criteria.MAX_LOW_QUALITY_SHARE,
                "max_whole_failures": Criteria.MAX_WHOLE_FAILURES,
                "max_slow_share": Criteria.MAX_SLOW_SHARE,
                "max_refused_share": Criteria.MAX_REFUSED_SHARE,
                "quality_tolerance": RunOutcome.QUALITY_TOLERANCE,
                "time_tolerance": RunOutcome.TIME_TOLERANCE,
            },
            "seeds": seeds,
            "policies": policies,
            "workloads": {
                w.name: {
                    "description": w.description,
                    "oracle": [asdict(o) for o in find_oracle(w).phases],
                    "oracle_time_s": find_oracle(w).total_time,
                    "results": {p: cells[(w.name, p)].to_json() for p in policies},
                }
                for w in workloads
            },
            "summary": summary,
            "decision_cost_s_per_call": decision_cost,
        }
        with open(args.json_path, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, default=str)
        print(f"wrote {args.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
