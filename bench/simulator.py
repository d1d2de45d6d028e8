"""Workload simulator for the batch-size benchmark.

A `Workload` is a synthetic job of `total_items` items, split into `Phase`s by the number of
successful items delivered so far (a later phase models drift). Each phase holds the TRUE
curves of the job; with `n` the number of items in a batch:

* Batch time. The curve is ``C(n) = fixed_s + per_item_s*n + quad_s*n**2`` seconds. A sampled
  time is ``C(n) * exp(sigma*Z - sigma**2/2)``, Z ~ N(0, 1), times ``outlier_factor`` with
  probability ``outlier_prob``. The ``-sigma**2/2`` makes the lognormal factor's mean exactly 1,
  so the expected batch time is ``E[T(n)] = C(n) * (1 + outlier_prob*(outlier_factor - 1))``.
* Quality. ``q(n) = max(q_floor, q0 - slope*max(0, n - knee))`` is the expected share of High
  items over ALL ``n`` items of the batch (failed items count as Low), which is the share the
  objective speaks of.
* Item failures. ``successful ~ Binomial(n, 1 - p)``; High among the successful items is
  ``Binomial(successful, q(n)/(1 - p))``, so that ``E[High]/n = q(n)`` exactly (hence every
  phase needs ``q0 <= 1 - p``). Of the remaining successful items a fixed share
  `MEDIUM_SHARE` is Medium; the rest, and every failed item, is Low. Failed items go back to
  the pool, so a run goes on until `total_items` items have succeeded.
* Failure cliff. A batch with ``n >= cliff`` fails whole: no item succeeds, every item counts
  as Low, and it costs ``failure_cost_s`` seconds (a timeout) or, when that is None, its
  sampled time.
* Transient failures. Any other batch fails whole with probability ``transient_failure_p``,
  whatever its size (HTTP 5xx, a flaky network), at the same cost as a cliff failure.
* Heterogeneous items. With ``item_cost_sigma`` each item's cost is ``per_item_s`` times a
  lognormal factor of mean 1; the batch's sum of ``n`` factors is drawn at once as a lognormal
  with the same mean and variance (Fenton-Wilkinson), so the noise of a batch falls with its
  size as for a sum of independent items.
* A broken spell. From ``Workload.broken_at_item`` successful items on, the next
  ``broken_calls`` batches fail whole whatever their size (a bug, fixed and the run resumed
  with its history), at ``broken_cost_s`` each.
* Item weights. With ``Workload.weights`` every item has a weight (its tokens), drawn once
  per run from a heavy-tailed distribution (`ItemWeights`) by a random stream of its own, and
  the batch time gains ``per_weight_s`` per unit of weight:
  ``C(n, W) = fixed_s + per_item_s*n + quad_s*n**2 + per_weight_s*W``, W the batch's summed
  weight. A batch takes the next items in order, up to the asked size and, with the config's
  ``max_batch_weight``, only while their summed weight stays within it (the first item always,
  alone when it is heavier), as the store claims them. The items of a batch start at the
  successful items delivered so far: failed items go back to the front, as in the ledger.
* A cost budget. With ``Workload.budget`` each batch costs ``n*cost_per_item +
  W*cost_per_weight_unit`` (whole failures included) and, before each batch, the run stops
  when what it spent plus what that batch's items would cost would pass ``max_cost``, as
  the pipeline does (it prices the items a stage would claim before claiming them).

* A rate limit. With ``Workload.rate_limit`` the provider admits at most
  ``tokens_per_minute`` tokens in any sliding minute (each item costs ``tokens_per_item``);
  a call above it comes back 429 after ``refused_call_s`` seconds with the exact wait until
  the window has room. The package's stage waits that long (with its own jitter) and calls
  again with the same items; a peer sees the 429 as a batch that failed whole, as today's
  systems do, and goes on at once. A policy's `ScalingDecision.wait_seconds` passes on the
  clock before its next batch. The oracle is the best fixed size at the best fixed pacing: a
  window admits ``k = floor(L/n)`` whole batches (L items a minute), so a fixed size starts
  every ``60/k`` seconds, or when the batch before it ends if that is later
  (`_paced_seconds_per_success`).

The best batch size of a phase (`find_oracle`) is searched over every integer in
``[min_batch_size, max_batch_size]`` on these true curves: feasible when ``q(n) >= target``,
``E[T(n)] <= processing_time_threshold`` and ``n < cliff``; best when
``E[T(n)] / (n*(1 - p))``, the expected time per successful item, is lowest. With item
weights, each size is walked over a reference sequence of weights (the workload's own, drawn
once with a fixed seed) in batches as the simulator makes them: the size's time per
successful item is the walk's expected time over its items times (1 - p), and it is feasible
when the items of batches that break the quality target or the time limit are at most
`WEIGHED_ORACLE_SLACK` of them. A run that a cost budget stops is measured against the oracle
time of the items it delivered. The oracle time
of a run is the sum over phases of (successful items the phase needs) x (its best time per
successful item). When no size is feasible in a phase, the oracle drops the quality target,
then also the time limit (never the cliff) and says so in `PhaseOptimum.relaxed`; none of the
bench's own workloads needs that. A batch belongs to the phase of the successful items
delivered before it starts.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import random
import statistics
from collections import deque
from dataclasses import dataclass, field
from functools import cache
from typing import Protocol, runtime_checkable

from scaling_core.budget import CostBudget
from scaling_core import rates
from scaling_core.config import ScalingConfig
from scaling_core.results import BatchResult, ConfidenceLevel, ScalingDecision

__all__ = [
    "DEFAULT_MAX_TIME_RATIO",
    "BatchRecord",
    "ItemWeights",
    "Oracle",
    "Phase",
    "PhaseOptimum",
    "Policy",
    "RateLimit",
    "RunMetrics",
    "RunOutcome",
    "SampledBatch",
    "Workload",
    "binomial",
    "find_oracle",
    "sample_batch",
    "simulate",
    "stable_seed",
]


@runtime_checkable
class Policy(Protocol):
    """What the simulator drives: the protocol of `scaling_core.manager.ScalingManager`.

    Per batch the simulator reads `get_current_batch_size()`, runs a batch of that size,
    appends its `BatchResult` to the history (oldest first), calls
    `evaluate_scaling(history)` once with the whole history and passes the decision to
    `apply_scaling_decision`.
    """

    def get_current_batch_size(self) -> int:
        """Size of the next batch, in items."""
        ...

    def evaluate_scaling(self, history: list[BatchResult]) -> ScalingDecision:
        """Decide the next size from the whole ordered history (oldest first)."""
        ...

    def apply_scaling_decision(self, decision: ScalingDecision) -> object:
        """Adopt `decision.new_batch_size` as the next size."""
        ...


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from `parts` that is the same in every process and Python version.

    The built-in `hash` of a str changes per process, so it cannot seed reproducible runs.
    """
    digest = hashlib.blake2b("|".join(str(part) for part in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def binomial(rng: random.Random, n: int, p: float) -> int:
    """Draw from Binomial(n, p) using only `rng.random()`, identically on every Python version.

    For ``n*min(p, 1-p) < 10`` it counts geometric waiting times between successes (expected
    O(n*p) draws); above that it uses Hörmann's BTRS transformed rejection with squeeze
    (W. Hörmann, "The generation of binomial random variates", J. Statist. Comput. Simul. 46,
    1993), with the ``log(v)`` on the acceptance test that the paper omits.
    """
    if n <= 0 or p <= 0.0:
        return 0
    if p >= 1.0:
        return n
    if p > 0.5:
        # Symmetry: count the failures instead, so that the loops below see p <= 0.5.
        return n - binomial(rng, n, 1.0 - p)
    if n * p < 10.0:
        # Trials until a success are Geometric(p): G = floor(log(U)/log(1-p)) + 1, U in (0, 1].
        log_q = math.log1p(-p)
        successes = 0
        trial = 0
        while True:
            trial += int(math.log(1.0 - rng.random()) / log_q) + 1
            if trial > n:
                return successes
            successes += 1
    spq = math.sqrt(n * p * (1.0 - p))
    b = 1.15 + 2.53 * spq
    a = -0.0873 + 0.0248 * b + 0.01 * p
    c = n * p + 0.5
    v_r = 0.92 - 4.2 / b
    alpha = (2.83 + 5.1 / b) * spq
    log_odds = math.log(p / (1.0 - p))
    mode = math.floor((n + 1) * p)
    log_h = math.lgamma(mode + 1) + math.lgamma(n - mode + 1)
    while True:
        u = rng.random() - 0.5
        v = rng.random()
        us = 0.5 - abs(u)
        if us <= 0.0:
            continue
        k = math.floor((2.0 * a / us + b) * u + c)
        if k < 0 or k > n:
            continue
        if us >= 0.07 and v <= v_r:
            return k
        v *= alpha / (a / (us * us) + b)
        if v <= 0.0:
            return k
        if math.log(v) <= log_h - math.lgamma(k + 1) - math.lgamma(n - k + 1) + (k - mode) * log_odds:
            return k


@dataclass(frozen=True, kw_only=True)
class Phase:
    """The true curves of a workload from `start_item` successful items on (see module doc)."""

    MEDIUM_SHARE = 0.7
    """Share of the successful non-High items that are Medium; the rest are Low."""

    start_item: int = 0
    """Successful items delivered before this phase begins."""
    fixed_s: float
    """Fixed cost of one batch (a call's overhead), seconds."""
    per_item_s: float
    """Linear cost per item, seconds."""
    quad_s: float = 0.0
    """Quadratic cost, seconds per item squared: makes large batches super-linear."""
    noise_sigma: float = 0.1
    """Sigma of the multiplicative lognormal timing noise."""
    outlier_prob: float = 0.0
    """Probability that a batch is an outlier, `outlier_factor` times slower."""
    outlier_factor: float = 3.0
    q0: float = 0.97
    """Expected High share (over all items) of batches up to `knee` items."""
    knee: int = 1_000_000_000
    """Largest batch size whose quality is still q0."""
    slope: float = 0.0
    """Loss of expected High share per item beyond the knee."""
    q_floor: float = 0.0
    """The High share never falls below this."""
    cliff: int | None = None
    """Batches of at least this many items fail whole; None for no cliff."""
    item_failure_p: float = 0.0
    """Probability that one item fails on its own (it is then Low and retried later)."""
    failure_cost_s: float | None = None
    """Seconds a whole-batch failure costs (a timeout); None charges its sampled time."""
    transient_failure_p: float = 0.0
    """Probability that a batch under the cliff fails whole anyway, whatever its size."""
    item_cost_sigma: float = 0.0
    """Sigma of each item's lognormal cost factor (heterogeneous items); 0 for equal items."""
    per_weight_s: float = 0.0
    """Cost per unit of item weight (a token), seconds; needs `Workload.weights`."""

    def __post_init__(self) -> None:
        if self.start_item < 0:
            raise ValueError(f"start_item must not be negative, got {self.start_item}")
        if self.fixed_s < 0.0 or self.per_item_s < 0.0 or self.quad_s < 0.0:
            raise ValueError("time coefficients must not be negative")
        if self.fixed_s + self.per_item_s + self.quad_s <= 0.0:
            raise ValueError("a batch must take some time")
        if not 0.0 <= self.outlier_prob <= 1.0 or self.outlier_factor < 1.0:
            raise ValueError("outlier_prob must lie in [0, 1] and outlier_factor be >= 1")
        if not 0.0 <= self.item_failure_p < 1.0:
            raise ValueError(f"item_failure_p must lie in [0, 1), got {self.item_failure_p}")
        if not 0.0 <= self.q_floor <= self.q0 <= 1.0 - self.item_failure_p:
            # q(n) is a share over ALL items and failed items are Low, so it cannot exceed 1-p.
            raise ValueError(
                f"need 0 <= q_floor ({self.q_floor}) <= q0 ({self.q0}) <= 1 - item_failure_p "
                f"({1.0 - self.item_failure_p})"
            )
        if self.cliff is not None and self.cliff < 1:
            raise ValueError(f"cliff must be positive, got {self.cliff}")
        if not 0.0 <= self.transient_failure_p < 1.0:
            raise ValueError(f"transient_failure_p must lie in [0, 1), got {self.transient_failure_p}")
        if self.item_cost_sigma < 0.0:
            raise ValueError(f"item_cost_sigma must not be negative, got {self.item_cost_sigma}")
        if self.per_weight_s < 0.0:
            raise ValueError(f"per_weight_s must not be negative, got {self.per_weight_s}")

    @property
    def outlier_mean_factor(self) -> float:
        """Mean of the outlier multiplier: E[T(n)] = C(n) * this."""
        return 1.0 + self.outlier_prob * (self.outlier_factor - 1.0)

    def curve_time(self, n: int, weight: float = 0.0) -> float:
        """C(n, W) = fixed + per_item*n + quad*n^2 + per_weight*W, the noise-free batch time in seconds."""
        return self.fixed_s + self.per_item_s * n + self.quad_s * n * n + self.per_weight_s * weight

    def expected_time(self, n: int, weight: float = 0.0) -> float:
        """E[T(n, W)], the true expected time of a batch of `n` items of summed weight `W`, outliers included."""
        return self.curve_time(n, weight) * self.outlier_mean_factor

    def high_share(self, n: int) -> float:
        """q(n), the true expected High share over all `n` items of a batch that does not fail whole."""
        return max(self.q_floor, self.q0 - self.slope * max(0, n - self.knee))

    def fails_whole(self, n: int) -> bool:
        """True when a batch of `n` items fails as a whole."""
        return self.cliff is not None and n >= self.cliff

    def expected_cost(self, n: int, weight: float = 0.0) -> float:
        """Expected seconds a batch of `n` items (of summed weight `W`) under the cliff costs, transient failures included."""
        expected = self.expected_time(n, weight)
        failure = self.failure_cost_s if self.failure_cost_s is not None else expected
        r = self.transient_failure_p
        return (1.0 - r) * expected + r * failure

    def seconds_per_success(self, n: int) -> float:
        """Expected seconds per successful item at a fixed size `n` under the cliff:
        E[cost] / (n*(1-p)*(1-r)), r the transient failure rate."""
        return self.expected_cost(n) / (n * (1.0 - self.item_failure_p) * (1.0 - self.transient_failure_p))


@dataclass(frozen=True, kw_only=True)
class ItemWeights:
    """Heavy-tailed item weights (tokens): lognormal, rounded to whole units, within [1, max_weight].

    A lognormal of median m and sigma s has mean m*exp(s^2/2) and a tail heavier the larger s
    (at s = 1.3, one item in 100 weighs over 20 times the median). `max_weight` is the
    longest input the model takes (8,192 tokens for many embedding models).
    """

    median: float
    sigma: float
    max_weight: float

    def __post_init__(self) -> None:
        if self.median <= 0 or self.sigma < 0 or self.max_weight < 1:
            raise ValueError("need median > 0, sigma >= 0 and max_weight >= 1")

    def draw(self, rng: random.Random, count: int) -> list[float]:
        """`count` weights from `rng`."""
        mu = math.log(self.median)
        return [float(min(self.max_weight, max(1, round(rng.lognormvariate(mu, self.sigma))))) for _ in range(count)]


WEIGHED_ORACLE_SLACK = 0.01
"""Share of items a weighed oracle size may deliver from batches over the time limit or under the target."""


@dataclass(frozen=True, kw_only=True)
class RateLimit:
    """A provider's tokens-per-minute limit over a sliding minute (see the module docstring)."""

    PERIOD_S = 60.0

    tokens_per_minute: float
    tokens_per_item: float
    refused_call_s: float = 0.2
    """Seconds a refused call (a 429) costs: the round trip, nothing processed."""

    def __post_init__(self) -> None:
        if self.tokens_per_minute <= 0 or self.tokens_per_item <= 0 or self.refused_call_s < 0:
            raise ValueError("a rate limit needs positive tokens and a non-negative refusal cost")

    @property
    def items_per_second(self) -> float:
        """R, the items per second the limit admits."""
        return self.tokens_per_minute / self.tokens_per_item / self.PERIOD_S


class _Provider:
    """The sliding-minute token window of a `RateLimit`, on the simulated clock."""

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._admitted: deque[tuple[float, float]] = deque()
        self._held = 0.0

    def admit(self, at: float, items: int) -> float | None:
        """Admit a call of `items` items at `at`: None, or the seconds until the window has room."""
        tokens = items * self.limit.tokens_per_item
        period = self.limit.PERIOD_S
        while self._admitted and self._admitted[0][0] <= at - period:
            self._held -= self._admitted.popleft()[1]
        if self._held + tokens <= self.limit.tokens_per_minute:
            self._admitted.append((at, tokens))
            self._held += tokens
            return None
        held = self._held
        for when, count in self._admitted:
            held -= count
            if held + tokens <= self.limit.tokens_per_minute:
                return max(when + period - at, 1e-6)
        return period  # larger than the whole limit: never admitted


DEFAULT_MAX_TIME_RATIO = 1.10
"""Mean time / oracle a policy must keep on a workload to pass, unless the workload says otherwise."""


@dataclass(frozen=True, kw_only=True)
class Workload:
    """A named synthetic job: its own `ScalingConfig`, a size, and one or more phases."""

    BATCH_CAP_FACTOR = 5
    """A run may take this many times N/((1-p)*min_batch_size) batches (all it needs without whole failures)."""
    BATCH_CAP_SLACK = 1_000

    name: str
    description: str
    config: ScalingConfig
    total_items: int
    phases: tuple[Phase, ...]
    max_time_ratio: float = DEFAULT_MAX_TIME_RATIO
    """Mean time / oracle a policy must keep to pass (a job of a few hundred items cannot
    repay any exploration, so a tiny job may be given more)."""
    broken_at_item: int | None = None
    """Successful items after which the processor breaks (None: it never does)."""
    broken_calls: int = 0
    """Batches that fail whole, whatever their size, once it is broken."""
    broken_cost_s: float = 0.1
    """Seconds a call of the broken processor costs (it raises at once)."""
    weights: ItemWeights | None = None
    """Each item's weight (tokens), drawn per run; None: items weigh nothing."""
    budget: CostBudget | None = None
    """The run's prices and cost budget; the run stops before a batch would pass `max_cost`."""
    rate_limit: RateLimit | None = None
    """The provider's tokens-per-minute limit (None: no limit)."""

    def __post_init__(self) -> None:
        if any(phase.per_weight_s for phase in self.phases) and self.weights is None:
            raise ValueError(f"{self.name}: a cost per unit of weight needs item weights")
        if self.total_items < 1:
            raise ValueError(f"total_items must be positive, got {self.total_items}")
        if not self.phases or self.phases[0].start_item != 0:
            raise ValueError("the first phase must start at item 0")
        starts = [phase.start_item for phase in self.phases]
        if starts != sorted(set(starts)) or starts[-1] >= self.total_items:
            raise ValueError(f"phase starts must increase and lie below total_items, got {starts}")
        for phase in self.phases:
            if phase.cliff is not None and phase.cliff <= self.config.min_batch_size:
                raise ValueError(
                    f"{self.name}: a cliff at {phase.cliff} leaves no size >= min_batch_size that works"
                )

    def batch_cap(self) -> int:
        """Most batches a run may take before it is stopped and marked truncated."""
        worst_p = max(phase.item_failure_p for phase in self.phases)
        needed = self.total_items / ((1.0 - worst_p) * self.config.min_batch_size)
        return self.BATCH_CAP_FACTOR * math.ceil(needed) + self.BATCH_CAP_SLACK

    def phase_index_at(self, delivered: int) -> int:
        """Index of the phase that a batch starting after `delivered` successful items runs in."""
        index = 0
        for i, phase in enumerate(self.phases):
            if phase.start_item <= delivered:
                index = i
        return index

    def phase_items(self, index: int) -> int:
        """Successful items that phase `index` covers."""
        end = self.phases[index + 1].start_item if index + 1 < len(self.phases) else self.total_items
        return end - self.phases[index].start_item

    def item_weights(self, seed: int | str) -> list[float] | None:
        """The weights of the run's items in ledger order, from a stream of their own (None: no weights)."""
        if self.weights is None:
            return None
        return self.weights.draw(random.Random(stable_seed(self.name, seed, "weights")), self.total_items)


def weighed_batch(prefix: list[float], start: int, asked: int, max_weight: float | None) -> tuple[int, float]:
    """(items, weight) of a batch of up to `asked` items from position `start`, as the store claims them.

    `prefix[k]` is the summed weight of the first k items. The batch takes the items in order
    while their summed weight stays within `max_weight`, and the first item always.
    """
    end = min(start + asked, len(prefix) - 1)
    if max_weight is not None:
        within = bisect.bisect_right(prefix, prefix[start] + max_weight, lo=start + 1, hi=end + 1) - 1
        end = max(start + 1, within)
    return end - start, prefix[end] - prefix[start]


@dataclass(frozen=True)
class PhaseOptimum:
    """The best fixed batch size of one phase, from the true curves."""

    phase_index: int
    size: int
    seconds_per_success: float
    items: int
    """Successful items this phase must deliver."""
    relaxed: tuple[str, ...] = ()
    """Constraints dropped because no size met them all ("quality", then "time")."""

    @property
    def time_s(self) -> float:
        """Oracle seconds spent in this phase."""
        return self.items * self.seconds_per_success


@dataclass(frozen=True)
class Oracle:
    """Best fixed size per phase and the oracle time of the whole run."""

    phases: tuple[PhaseOptimum, ...]
    broken_time_s: float = 0.0
    """Seconds of the broken spell, which every policy pays."""

    @property
    def total_time(self) -> float:
        """Sum over phases of items x best seconds per successful item, plus the broken spell."""
        return sum(phase.time_s for phase in self.phases) + self.broken_time_s

    def time_for(self, workload: Workload, delivered: int) -> float:
        """Oracle seconds for the first `delivered` successful items (a run a budget stopped)."""
        if delivered >= workload.total_items:
            return self.total_time
        seconds = 0.0
        for phase in self.phases:
            start = workload.phases[phase.phase_index].start_item
            seconds += max(0, min(phase.items, delivered - start)) * phase.seconds_per_success
        return seconds


@cache
def _reference_prefix(workload: Workload) -> list[float] | None:
    """Prefix sums of the workload's reference weights, which the oracle walks."""
    weights = workload.item_weights("oracle")
    return None if weights is None else [0.0, *itertools.accumulate(weights)]


def _weighed_profile(phase: Phase, workload: Workload, n: int) -> tuple[float, float, float]:
    """(seconds per successful item, share of items over the time limit, share under the target) of
    asked size `n` walked over the reference weights."""
    prefix = _reference_prefix(workload)
    assert prefix is not None
    config = workload.config
    slow_limit, target = config.processing_time_threshold, config.high_confidence_threshold
    seconds = 0.0
    slow = low = 0
    start, total = 0, len(prefix) - 1
    while start < total:
        items, weight = weighed_batch(prefix, start, n, config.max_batch_weight)
        seconds += phase.expected_cost(items, weight)
        slow += items if phase.expected_time(items, weight) > slow_limit else 0
        low += items if phase.high_share(items) < target else 0
        start += items
    successes = total * (1.0 - phase.item_failure_p) * (1.0 - phase.transient_failure_p)
    return seconds / successes, slow / total, low / total


def _best_weighed_size(phase: Phase, workload: Workload, *, quality: bool, time_limit: bool) -> tuple[int, float] | None:
    best: tuple[int, float] | None = None
    for n in range(workload.config.min_batch_size, workload.config.max_batch_size + 1):
        if phase.fails_whole(n):
            continue
        cost, slow, low = _weighed_profile(phase, workload, n)
        if (quality and low > WEIGHED_ORACLE_SLACK) or (time_limit and slow > WEIGHED_ORACLE_SLACK):
            continue
        if best is None or cost < best[1]:  # strict: ties keep the smaller size
            best = (n, cost)
    return best


def _paced_seconds_per_success(phase: Phase, n: int, limit: RateLimit | None) -> float:
    """Expected seconds per successful item at size `n` under the best fixed pacing of `limit`.

    A sliding window of P seconds admits at most ``k = floor(L / n)`` whole batches of n items
    (L items a window), so the best fixed pacing starts one every ``D = P / k`` seconds, and a
    batch that takes longer than D holds the next one back: a batch costs ``E[max(D, T(n))]``.
    With ``T = c * exp(sigma Z - sigma^2 / 2)``: ``E[max(D, T)] = D Phi(z) + c Phi(sigma - z)``,
    ``z = (ln(D / c) + sigma^2 / 2) / sigma``; outliers are the same with ``c * outlier_factor``.
    The spread of item costs is left out. Without a limit: `Phase.seconds_per_success`.
    """
    if limit is None:
        return phase.seconds_per_success(n)
    per_window = limit.tokens_per_minute * limit.PERIOD_S / 60.0 / limit.tokens_per_item
    batches = math.floor(per_window / n)
    if batches < 1:
        return math.inf  # a batch larger than the limit is never admitted
    spacing = limit.PERIOD_S / batches
    sigma = phase.noise_sigma

    def held_back(curve: float) -> float:
        if sigma <= 0.0:
            return max(spacing, curve)
        z = (math.log(spacing / curve) + sigma * sigma / 2.0) / sigma
        return spacing * _NORMAL.cdf(z) + curve * _NORMAL.cdf(sigma - z)

    curve = phase.curve_time(n)
    busy = (1.0 - phase.outlier_prob) * held_back(curve) + phase.outlier_prob * held_back(curve * phase.outlier_factor)
    failure = max(spacing, phase.failure_cost_s) if phase.failure_cost_s is not None else busy
    r = phase.transient_failure_p
    return ((1.0 - r) * busy + r * failure) / (n * (1.0 - phase.item_failure_p) * (1.0 - r))


_NORMAL = statistics.NormalDist()


def _best_size(
    phase: Phase, config: ScalingConfig, *, quality: bool, time_limit: bool, rate_limit: RateLimit | None = None
) -> int | None:
    best: int | None = None
    best_cost = math.inf
    for n in range(config.min_batch_size, config.max_batch_size + 1):
        if phase.fails_whole(n):
            continue
        if quality and phase.high_share(n) < config.high_confidence_threshold:
            continue
        if time_limit and phase.expected_time(n) > config.processing_time_threshold:
            continue
        cost = _paced_seconds_per_success(phase, n, rate_limit)
        if cost < best_cost:  # strict: ties keep the smaller size
            best, best_cost = n, cost
    return best


@cache
def find_oracle(workload: Workload) -> Oracle:
    """Best fixed size of each phase by exhaustive search over [min_batch_size, max_batch_size].

    When no size meets every constraint in a phase, the quality target is dropped first and
    then the time limit (recorded in `PhaseOptimum.relaxed`); the cliff is never dropped, and
    `Workload` guarantees that some allowed size lies below it.
    """
    optima: list[PhaseOptimum] = []
    for index, phase in enumerate(workload.phases):
        if workload.weights is not None:
            optima.append(_weighed_optimum(index, phase, workload))
            continue
        relaxed: tuple[str, ...] = ()
        limit = workload.rate_limit
        size = _best_size(phase, workload.config, quality=True, time_limit=True, rate_limit=limit)
        if size is None:
            relaxed = ("quality",)
            size = _best_size(phase, workload.config, quality=False, time_limit=True, rate_limit=limit)
        if size is None:
            relaxed = ("quality", "time")
            size = _best_size(phase, workload.config, quality=False, time_limit=False, rate_limit=limit)
        assert size is not None  # Workload.__post_init__ keeps min_batch_size below every cliff
        per_success = _paced_seconds_per_success(phase, size, limit)
        optima.append(
            PhaseOptimum(
                phase_index=index,
                size=size,
                seconds_per_success=per_success,
                items=workload.phase_items(index),
                relaxed=relaxed,
            )
        )
    broken = workload.broken_calls * workload.broken_cost_s if workload.broken_at_item is not None else 0.0
    return Oracle(phases=tuple(optima), broken_time_s=broken)


def _weighed_optimum(index: int, phase: Phase, workload: Workload) -> PhaseOptimum:
    relaxed: tuple[str, ...] = ()
    best = _best_weighed_size(phase, workload, quality=True, time_limit=True)
    if best is None:
        relaxed = ("quality",)
        best = _best_weighed_size(phase, workload, quality=False, time_limit=True)
    if best is None:
        relaxed = ("quality", "time")
        best = _best_weighed_size(phase, workload, quality=False, time_limit=False)
    assert best is not None
    return PhaseOptimum(
        phase_index=index, size=best[0], seconds_per_success=best[1], items=workload.phase_items(index), relaxed=relaxed
    )


@dataclass(frozen=True)
class SampledBatch:
    """One simulated batch: what the policy sees and what only the bench knows."""

    result: BatchResult
    expected_high_share: float
    expected_time_s: float
    cause: str | None = None
    """Why the batch failed whole: "cliff", "transient" or "broken"; None when it did not."""


def sample_batch(
    phase: Phase,
    *,
    batch_id: str,
    asked: int,
    items: int,
    rng: random.Random,
    broken_cost_s: float | None = None,
    weight: float | None = None,
) -> SampledBatch:
    """Simulate one batch of `items` items (the policy asked for `asked`) in `phase`.

    The draws always happen in the same order (noise, outlier, item costs, transient
    failure, successes, High, Medium; the optional ones only where the phase has them), so a
    run is a pure function of its seed and the sizes the policy chose. With `broken_cost_s`
    the batch fails whole whatever its size (a broken processor), at that cost. `weight` is
    the summed weight of the batch's items (None: they weigh nothing); the result carries it.
    """
    sigma = phase.noise_sigma
    noise = math.exp(sigma * rng.gauss(0.0, 1.0) - 0.5 * sigma * sigma)
    if rng.random() < phase.outlier_prob:
        noise *= phase.outlier_factor
    per_item = phase.per_item_s
    if phase.item_cost_sigma > 0 and items > 0:
        # Sum of `items` lognormal factors of mean 1: mean items, variance items*(e^s^2 - 1).
        spread = math.sqrt(math.log1p(math.expm1(phase.item_cost_sigma**2) / items))
        per_item *= math.exp(spread * rng.gauss(0.0, 1.0) - 0.5 * spread * spread)
    elapsed = (phase.fixed_s + per_item * items + phase.quad_s * items * items) * noise
    if weight is not None:
        elapsed += phase.per_weight_s * weight * noise
    expected_time = phase.expected_time(items, weight or 0.0)
    cause: str | None = None
    cost = phase.failure_cost_s if phase.failure_cost_s is not None else elapsed
    if broken_cost_s is not None:
        cause, cost = "broken", broken_cost_s
    elif phase.fails_whole(items):
        cause = "cliff"
    elif phase.transient_failure_p > 0 and rng.random() < phase.transient_failure_p:
        cause = "transient"
    if cause is not None:
        result = BatchResult(
            batch_id=batch_id,
            batch_size=asked,
            total_items=items,
            successful_items=0,
            failed_items=items,
            processing_time=cost,
            confidence_distribution={
                ConfidenceLevel.HIGH: 0,
                ConfidenceLevel.MEDIUM: 0,
                ConfidenceLevel.LOW: items,
            },
            failed_whole=True,
            error=f"RuntimeError: simulated {cause} failure",
            total_weight=weight,
        )
        return SampledBatch(result=result, expected_high_share=0.0, expected_time_s=expected_time, cause=cause)
    p = phase.item_failure_p
    q = phase.high_share(items)
    successful = binomial(rng, items, 1.0 - p)
    # High | successful ~ Binomial(successful, q/(1-p)) gives E[High] = n(1-p) * q/(1-p) = n*q.
    high = binomial(rng, successful, min(1.0, q / (1.0 - p)))
    medium = binomial(rng, successful - high, Phase.MEDIUM_SHARE)
    result = BatchResult(
        batch_id=batch_id,
        batch_size=asked,
        total_items=items,
        successful_items=successful,
        failed_items=items - successful,
        processing_time=elapsed,
        confidence_distribution={
            ConfidenceLevel.HIGH: high,
            ConfidenceLevel.MEDIUM: medium,
            ConfidenceLevel.LOW: items - high - medium,
        },
        total_weight=weight,
    )
    return SampledBatch(result=result, expected_high_share=q, expected_time_s=expected_time)


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """What the bench keeps of one batch of a run."""

    index: int
    size: int
    """Size the policy asked for."""
    items: int
    """Items actually in the batch (fewer than `size` only at the end of the run)."""
    successful: int
    time_s: float
    """Seconds the batch cost (a timeout for some whole failures)."""
    expected_high_share: float
    """True expected High share over all items of the batch."""
    expected_time_s: float
    """True expected batch time E[T(items)]."""
    failed_whole: bool
    phase: int
    cause: str | None = None
    """Why it failed whole ("cliff", "transient", "broken"), None when it did not."""


@dataclass(frozen=True)
class RunMetrics:
    """Small, picklable summary of one run: the numbers the verdict is made of."""

    workload: str
    policy: str
    seed: int
    time_ratio: float
    low_quality_share: float
    whole_failures: int
    slow_share: float
    late_median_size: float
    batches: int
    out_of_bounds: int
    truncated: bool
    sizes_digest: str = ""
    """SHA-256 of the asked sizes in order: two runs with the same digest chose the same sizes."""
    spent: float | None = None
    """What the run's batches cost, with a cost budget (None without one)."""
    over_budget: bool = False
    """The run spent more than the workload's `max_cost`."""
    budget_stopped: bool = False
    """The budget stopped the run before every item succeeded."""
    refused_share: float = 0.0
    """Calls refused for the rate limit (429) / all calls."""
    items_per_second: float = 0.0
    """Successful items per second of the run."""


@dataclass(frozen=True)
class RunOutcome:
    """Everything about one run of one policy on one workload with one seed."""

    QUALITY_TOLERANCE = 0.02
    """A batch is low quality when its true expected High share is below target minus this."""
    TIME_TOLERANCE = 0.05
    """A batch is slow when its true expected time exceeds the time limit by more than this share."""

    workload: Workload
    policy: str
    seed: int
    records: tuple[BatchRecord, ...]
    total_time: float
    oracle_time: float
    delivered: int
    truncated: bool
    """True when the batch cap stopped the run before every item succeeded."""
    history: list[BatchResult] = field(repr=False, compare=False, default_factory=list)
    spent: float | None = None
    """What the run's batches cost, with a cost budget."""
    budget_stopped: bool = False
    """The cost budget stopped the run (the oracle time is then that of the items delivered)."""

    @property
    def over_budget(self) -> bool:
        """True when the run spent more than the workload's `max_cost`."""
        budget = self.workload.budget
        return bool(budget and budget.max_cost is not None and (self.spent or 0.0) > budget.max_cost)
    calls: int = 0
    """Provider calls made, refused ones included."""
    refused_calls: int = 0
    """Calls refused for the rate limit (429)."""

    @property
    def time_ratio(self) -> float:
        """Total time of the run / oracle time."""
        return self.total_time / self.oracle_time

    def _relaxed(self, constraint: str) -> set[int]:
        """Phases in which no size meets `constraint`: the verdict ignores it there."""
        return {o.phase_index for o in find_oracle(self.workload).phases if constraint in o.relaxed}

    @property
    def low_quality_share(self) -> float:
        """Share of successful items that came from batches whose true High share was below target - tolerance."""
        limit = self.workload.config.high_confidence_threshold - self.QUALITY_TOLERANCE
        relaxed = self._relaxed("quality")
        bad = sum(r.successful for r in self.records if r.expected_high_share < limit and r.phase not in relaxed)
        return bad / self.delivered if self.delivered else 0.0

    @property
    def slow_share(self) -> float:
        """Share of successful items from batches whose true expected time broke the limit plus tolerance."""
        limit = self.workload.config.processing_time_threshold * (1.0 + self.TIME_TOLERANCE)
        relaxed = self._relaxed("time")
        bad = sum(r.successful for r in self.records if r.expected_time_s > limit and r.phase not in relaxed)
        return bad / self.delivered if self.delivered else 0.0

    @property
    def whole_failures(self) -> int:
        """Batches that failed whole for their size (at the cliff): transient and broken
        failures happen to every policy alike and are not counted."""
        return sum(1 for r in self.records if r.cause == "cliff")

    @property
    def late_median_size(self) -> float:
        """Median asked size over the second half of the run, by batch count."""
        late = self.records[len(self.records) // 2 :]
        return float(statistics.median(r.size for r in late)) if late else 0.0

    @property
    def out_of_bounds(self) -> int:
        """Batches whose asked size lay outside [min_batch_size, max_batch_size]."""
        config = self.workload.config
        return sum(1 for r in self.records if not config.min_batch_size <= r.size <= config.max_batch_size)

    @property
    def sizes_digest(self) -> str:
        """SHA-256 (hex) of the asked sizes, in order."""
        return hashlib.sha256(",".join(str(r.size) for r in self.records).encode()).hexdigest()

    def metrics(self) -> RunMetrics:
        """The summary that the bench aggregates."""
        return RunMetrics(
            workload=self.workload.name,
            policy=self.policy,
            seed=self.seed,
            time_ratio=self.time_ratio,
            low_quality_share=self.low_quality_share,
            whole_failures=self.whole_failures,
            slow_share=self.slow_share,
            late_median_size=self.late_median_size,
            batches=len(self.records),
            out_of_bounds=self.out_of_bounds,
            truncated=self.truncated,
            sizes_digest=self.sizes_digest,
            spent=self.spent,
            over_budget=self.over_budget,
            budget_stopped=self.budget_stopped,
            refused_share=self.refused_calls / self.calls if self.calls else 0.0,
            items_per_second=self.delivered / self.total_time if self.total_time else 0.0,
        )


def simulate(workload: Workload, policy: Policy, seed: int, *, policy_name: str = "policy") -> RunOutcome:
    """Drive `policy` through `workload` until `total_items` items have succeeded.

    The environment's randomness depends only on (workload, seed), never on the policy, so
    two policies with the same seed face the same stream of draws.
    """
    rng = random.Random(stable_seed(workload.name, seed, "environment"))
    cap = workload.batch_cap()
    history: list[BatchResult] = []
    records: list[BatchRecord] = []
    delivered = 0
    total_time = 0.0
    broken_left = workload.broken_calls if workload.broken_at_item is not None else 0
    observe = getattr(policy, "observe_remaining", None)
    # A policy may bound the next batch's summed weight too (`ScalingManager.get_current_batch_weight`).
    weight_cap = getattr(policy, "get_current_batch_weight", None)
    weights = workload.item_weights(seed)
    prefix = None if weights is None else [0.0, *itertools.accumulate(weights)]
    budget = workload.budget
    spent: float | None = None if budget is None else 0.0
    stopped = False
    provider = _Provider(workload.rate_limit) if workload.rate_limit is not None else None
    honours = bool(getattr(policy, "honours_rate_limits", False))
    # The package's own jitter: apart from the environment's draws, which must not depend on the policy.
    jitter = random.Random(stable_seed(workload.name, seed, "jitter"))
    calls = refused_calls = 0
    pacing = 0.0
    while delivered < workload.total_items and len(records) < cap:
        total_time += pacing
        asked = int(policy.get_current_batch_size())
        if asked < 1:
            raise ValueError(f"{policy_name} asked for a batch of {asked} items")
        items = min(asked, workload.total_items - delivered)
        weight: float | None = None
        if prefix is not None:
            most = workload.config.weight_cap(weight_cap() if weight_cap is not None else None)
            items, weight = weighed_batch(prefix, delivered, asked, most)
        if budget is not None and spent is not None:
            next_cost = budget.batch_cost(items=items, weight=weight) or 0.0
            if budget.stop_message(spent=spent, next_cost=next_cost, finished=delivered) is not None:
                stopped = True
                break
        phase_index = workload.phase_index_at(delivered)
        broken = broken_left > 0 and delivered >= (workload.broken_at_item or 0)
        broken_left -= int(broken)
        sampled = sample_batch(
            workload.phases[phase_index],
            batch_id=f"{workload.name}-{len(records)}",
            asked=asked,
            items=items,
            rng=rng,
            broken_cost_s=workload.broken_cost_s if broken else None,
            weight=weight,
        )
        if budget is not None and spent is not None:
            spent += budget.batch_cost(items=items, weight=weight) or 0.0
        result, cause, clock = sampled.result, sampled.cause, sampled.result.processing_time
        if provider is not None:
            result, cause, clock, refused = _through_provider(
                provider, result, cause, start=total_time, honours=honours, rng=jitter
            )
            calls += refused + (0 if cause == "rate_limited" else 1)
            refused_calls += refused
        records.append(
            BatchRecord(
                index=len(records),
                size=asked,
                items=items,
                successful=result.successful_items,
                time_s=result.processing_time,
                expected_high_share=sampled.expected_high_share,
                expected_time_s=sampled.expected_time_s,
                failed_whole=result.failed_whole,
                phase=phase_index,
                cause=cause,
            )
        )
        delivered += result.successful_items
        total_time += clock
        history.append(result)
        if observe is not None:
            observe(workload.total_items - delivered)
        decision = policy.evaluate_scaling(history)
        policy.apply_scaling_decision(decision)
        pacing = decision.wait_seconds
    oracle = find_oracle(workload)
    return RunOutcome(
        workload=workload,
        policy=policy_name,
        seed=seed,
        records=tuple(records),
        total_time=total_time,
        oracle_time=oracle.time_for(workload, delivered) if stopped else oracle.total_time,
        delivered=delivered,
        truncated=delivered < workload.total_items and not stopped,
        history=history,
        spent=spent,
        budget_stopped=stopped,
        calls=calls,
        refused_calls=refused_calls,
    )


def _through_provider(
    provider: _Provider,
    result: BatchResult,
    cause: str | None,
    *,
    start: float,
    honours: bool,
    rng: random.Random,
) -> tuple[BatchResult, str | None, float, int]:
    """Send a sampled batch to the rate-limited provider at `start`.

    Returns the batch as the policy sees it, its cause of failure, the seconds it took on the
    clock (refused calls and waits included) and the calls refused. A policy that honours
    rate limits waits as the package's stage does (`scaling_core.rates.backoff` with its
    jitter) and calls again; any other sees the first 429 as a batch that failed whole.
    """
    limit = provider.limit
    refused = 0
    wasted = waited = 0.0
    while (room := provider.admit(start + wasted + waited, result.total_items)) is not None:
        refused += 1
        wasted += limit.refused_call_s
        wait = rates.backoff(refused, room) * (1.0 + rates.JITTER * rng.random()) if honours else 0.0
        if not honours or waited + wait > rates.MAX_TOTAL_WAIT:
            error = "RateLimited: HTTP 429, tokens per minute" if not honours else "RateLimitExhausted"
            failed = BatchResult(
                batch_id=result.batch_id,
                batch_size=result.batch_size,
                total_items=result.total_items,
                successful_items=0,
                failed_items=result.total_items,
                processing_time=wasted,
                confidence_distribution={ConfidenceLevel.LOW: result.total_items},
                failed_whole=True,
                error=error,
                rate_limited_calls=refused,
                rate_wait=waited,
                ended_at=start + wasted + waited,
            )
            return failed, "rate_limited", wasted + waited, refused
        waited += wait
    elapsed = result.processing_time + wasted
    admitted = result.model_copy(
        update={
            "processing_time": elapsed,
            "rate_limited_calls": refused,
            "rate_wait": waited,
            "ended_at": start + elapsed + waited,
        }
    )
    return admitted, cause, elapsed + waited, refused
