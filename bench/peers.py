"""Peer batch-size policies, each written from its published description.

Every peer speaks the protocol of `scaling_core.manager.ScalingManager`
(`bench.simulator.Policy`), so the simulator drives all policies one way. The simulator calls
`evaluate_scaling` once per appended batch; the peers read only the tail of the history.

Sources:

* `FixedPolicy`: the baseline; always the configured `initial_batch_size`.
* `ClassicRulePolicy`: the windowed threshold rule that this package's configuration fields
  describe (`scaling_factor`, `high_confidence_threshold`, `low_confidence_threshold`,
  `processing_time_threshold`): every 3 batches look at the last 5; grow by the factor when
  more than the high threshold of items are High, the batches are within the time limit and
  over 95% of items succeed; shrink by it when the High share is below the low threshold,
  the batches are too slow, or fewer than 80% of items succeed.
* `AIMDPolicy`: Netflix concurrency-limits `AIMDLimit`
  (github.com/Netflix/concurrency-limits, concurrency-limits-core/.../limit/AIMDLimit.java):
  on a drop or a sample slower than the timeout, ``limit = (int)(limit * backoffRatio)``
  with ``backoffRatio = 0.9``; otherwise, when ``inflight * 2 >= limit``, the limit grows by
  one; the result is clamped to [minLimit, maxLimit].
* `BeamBatchElementsPolicy`: Apache Beam `BatchElements` and its `_BatchSizeEstimator`
  (apache_beam/transforms/util.py): least-squares fit of ``time = a + b*size``, a target
  size from ``target_batch_overhead`` and ``target_batch_duration_secs``, growth capped at
  ``_MAX_GROWTH_FACTOR = 2`` per step, and a random ``variance`` smear around the target.
* `BinarySearchDownPolicy`: Hugging Face accelerate `find_executable_batch_size`
  (accelerate/utils/memory.py): start at `starting_batch_size` and halve it on every
  out-of-memory-like failure, never growing back; the same search-down idea as PyTorch
  Lightning's `BatchSizeFinder` in "binsearch" mode, applied here while the job runs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from bench.simulator import Policy
from scaling_core.config import ScalingConfig
from scaling_core.results import BatchResult, ScalingAction, ScalingDecision

__all__ = [
    "PEERS",
    "AIMDPolicy",
    "BeamBatchElementsPolicy",
    "BinarySearchDownPolicy",
    "ClassicRulePolicy",
    "FixedPolicy",
]


def _decision(
    config: ScalingConfig,
    old: int,
    new: int,
    reason: str,
    metrics: dict[str, float] | None = None,
) -> ScalingDecision:
    if new > old:
        action = ScalingAction.INCREASE
    elif new < old:
        action = ScalingAction.DECREASE
    else:
        action = ScalingAction.MAINTAIN
    return ScalingDecision(
        action=action,
        new_batch_size=new,
        reason=reason,
        confidence_threshold=config.high_confidence_threshold,
        performance_metrics=metrics or {},
    )


class _PeerBase:
    """Holds the config and the current size; `apply_scaling_decision` adopts the new size."""

    def __init__(self, config: ScalingConfig, start_size: int) -> None:
        self.config = config
        self._size = start_size

    def get_current_batch_size(self) -> int:
        """Size of the next batch, in items."""
        return self._size

    def apply_scaling_decision(self, decision: ScalingDecision) -> None:
        """Adopt the decision's size."""
        self._size = decision.new_batch_size


class FixedPolicy(_PeerBase):
    """Always `config.initial_batch_size`."""

    def __init__(self, config: ScalingConfig, rng: random.Random | None = None) -> None:
        super().__init__(config, config.initial_batch_size)

    def evaluate_scaling(self, history: Sequence[BatchResult]) -> ScalingDecision:
        """Keep the size."""
        return _decision(self.config, self._size, self._size, "fixed size")


class ClassicRulePolicy(_PeerBase):
    """Every `EVALUATE_EVERY` batches, grow or shrink by `scaling_factor` on the last `WINDOW` batches.

    Shares are pooled over the window's items (High items / items, successful items /
    items); the time test uses the window's mean batch time. Shrinking is checked first, so
    a breached limit always wins over growth.
    """

    EVALUATE_EVERY = 3
    WINDOW = 5
    GROW_MIN_SUCCESS_RATE = 0.95
    SHRINK_BELOW_SUCCESS_RATE = 0.80

    def __init__(self, config: ScalingConfig, rng: random.Random | None = None) -> None:
        super().__init__(config, config.initial_batch_size)

    def evaluate_scaling(self, history: Sequence[BatchResult]) -> ScalingDecision:
        """Apply the rule when the history length is a multiple of `EVALUATE_EVERY`."""
        config = self.config
        if not history or len(history) % self.EVALUATE_EVERY:
            return _decision(config, self._size, self._size, "between evaluations")
        window = history[-self.WINDOW :]
        items = sum(result.total_items for result in window)
        if items == 0:
            return _decision(config, self._size, self._size, "no items in window")
        high_share = sum(result.high_count for result in window) / items
        success_rate = sum(result.successful_items for result in window) / items
        mean_time = sum(result.processing_time for result in window) / len(window)
        metrics = {"high_share": high_share, "success_rate": success_rate, "mean_time_s": mean_time}
        limit = config.processing_time_threshold
        if (
            high_share < config.low_confidence_threshold
            or mean_time > limit
            or success_rate < self.SHRINK_BELOW_SUCCESS_RATE
        ):
            new = config.clamp(self._size / config.scaling_factor)
            return _decision(config, self._size, new, "limit breached in window", metrics)
        if (
            high_share > config.high_confidence_threshold
            and mean_time < limit
            and success_rate > self.GROW_MIN_SUCCESS_RATE
        ):
            new = config.clamp(self._size * config.scaling_factor)
            return _decision(config, self._size, new, "window all good", metrics)
        return _decision(config, self._size, self._size, "window neither good nor bad", metrics)


class AIMDPolicy(_PeerBase):
    """Additive increase, multiplicative decrease on each batch (Netflix `AIMDLimit`).

    One batch is one sample. It is a drop when it failed whole, took longer than
    `processing_time_threshold` (the timeout), or its High share fell below
    `high_confidence_threshold` (the package's third constraint; `AIMDLimit` itself knows
    only drops and latency). A drop sets ``size = int(size * BACKOFF_RATIO)``. Otherwise the
    size grows when the batch was at least half full (``inflight * 2 >= limit``), by
    ``max(INCREASE_ITEMS, min_batch_size)`` items: `AIMDLimit` adds one per sample, which
    at one sample per batch would need hundreds of batches to move by a few hundred items.
    """

    BACKOFF_RATIO = 0.9
    INCREASE_ITEMS = 5

    def __init__(self, config: ScalingConfig, rng: random.Random | None = None) -> None:
        super().__init__(config, config.initial_batch_size)

    @property
    def increase_step(self) -> int:
        """Items added after a good batch."""
        return max(self.INCREASE_ITEMS, self.config.min_batch_size)

    def evaluate_scaling(self, history: Sequence[BatchResult]) -> ScalingDecision:
        """Back off on a dropped last batch, else add the step."""
        config = self.config
        last = history[-1]
        dropped = (
            last.failed_whole
            or last.processing_time > config.processing_time_threshold
            or last.high_share < config.high_confidence_threshold
        )
        if dropped:
            new = int(self._size * self.BACKOFF_RATIO)
            reason = "drop: multiplicative decrease"
        elif last.total_items * 2 >= self._size:
            new = self._size + self.increase_step
            reason = "good batch: additive increase"
        else:
            new = self._size
            reason = "batch less than half full"
        return _decision(config, self._size, config.clamp(new), reason)


class BeamBatchElementsPolicy(_PeerBase):
    """Apache Beam's `_BatchSizeEstimator`, with the package's time limit as its target duration.

    What it keeps: ``(asked size, seconds)`` of each batch; at `MAX_DATA_POINTS` points it
    drops one random point from the oldest quarter and one from the oldest half (Beam's
    `_thin_data`). It never looks at quality or item failures. A whole-batch failure is kept
    as an ordinary timing (its cost, e.g. a timeout) when `RECORD_FAILED_BATCHES` is true, as
    a caller that catches the error and reports the elapsed time would feed it. In Beam
    itself the exception leaves `record_time` before the timing is stored; with that
    (`RECORD_FAILED_BATCHES = False`) nothing changes after a failure, so the estimator asks
    for the same size again and a run at a cliff only ends at the simulator's batch cap.

    How it sizes (Beam's `_calculate_next_batch_size`):

    * no data: `min_batch_size`; one point: ``max(min(max, 2*min), min + 1)``;
    * keep the ``max(20, 4/5 of)`` smallest points, sorted by (size, time): Beam calls the top
      fifth outliers, and since tuples sort by size first, that is the largest sizes;
    * fit ``time = a + b*size``: ordinary least squares, and from 10 points on (Beam's NumPy
      path) refit without points of Cook's distance above 0.5, with `numpy.polyfit`
      weights ``1/size`` (residuals weighted by ``1/size``, squares by ``1/size**2``);
    * ``a = max(a, 1e-10)``, ``b = max(b, 1e-20)``;
    * target = min(max, (duration - a)/b, (a/b)*(1/overhead - 1)): the size whose batch takes
      `processing_time_threshold` and the one whose fixed cost is `TARGET_BATCH_OVERHEAD` of
      the batch time (``a = overhead*(a + b*x)``);
    * from 11 points on, smear: ``target += int(target * VARIANCE * 2 * (u - 0.5))``, u from
      the seeded rng;
    * return ``int(max(min + jitter, min(target, 2 * last size, max)))``, jitter alternating 0/1
      with the parity of the point count.
    """

    TARGET_BATCH_OVERHEAD = 0.05
    VARIANCE = 0.25
    MAX_DATA_POINTS = 100
    MAX_GROWTH_FACTOR = 2
    KEEP_MIN_POINTS = 20
    KEEP_FRACTION_NUMERATOR = 4
    KEEP_FRACTION_DENOMINATOR = 5
    OUTLIER_FIT_MIN_POINTS = 10
    COOK_DISTANCE_LIMIT = 0.5
    SMEAR_MIN_POINTS = 11
    RECORD_FAILED_BATCHES = True

    def __init__(self, config: ScalingConfig, rng: random.Random | None = None) -> None:
        super().__init__(config, config.min_batch_size)
        self._rng = rng if rng is not None else random.Random(0)
        self._data: list[tuple[int, float]] = []
        self._seen = 0

    @property
    def data(self) -> list[tuple[int, float]]:
        """The (size, seconds) points the estimator holds now."""
        return list(self._data)

    def _record(self, result: BatchResult) -> None:
        if result.failed_whole and not self.RECORD_FAILED_BATCHES:
            return
        self._data.append((result.asked_size, result.processing_time))
        if len(self._data) >= self.MAX_DATA_POINTS:
            # Two pops keep the parity of the count, which drives the jitter.
            self._data.pop(self._rng.randrange(len(self._data) // 4))
            self._data.pop(self._rng.randrange(len(self._data) // 2))

    @classmethod
    def _least_squares(
        cls, xs: Sequence[float], ys: Sequence[float], weights: Sequence[float] | None = None
    ) -> tuple[float, float]:
        # Minimise sum W_i (y_i - a - b x_i)^2: b = Sxy/Sxx around the weighted means.
        w = weights if weights is not None else [1.0] * len(xs)
        total = sum(w)
        x_mean = sum(wi * x for wi, x in zip(w, xs, strict=True)) / total
        y_mean = sum(wi * y for wi, y in zip(w, ys, strict=True)) / total
        sxx = sum(wi * (x - x_mean) ** 2 for wi, x in zip(w, xs, strict=True))
        sxy = sum(wi * (x - x_mean) * (y - y_mean) for wi, x, y in zip(w, xs, ys, strict=True))
        b = sxy / sxx
        return y_mean - b * x_mean, b

    @classmethod
    def fit(cls, xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
        """(a, b) of ``time = a + b*size`` as Beam fits it (see the class docstring)."""
        n = len(xs)
        if all(x == xs[0] for x in xs):
            return 0.0, (sum(ys) / n) / (sum(xs) / n)
        a, b = cls._least_squares(xs, ys)
        if n < cls.OUTLIER_FIT_MIN_POINTS:
            return a, b
        errs = [a + b * x - y for x, y in zip(xs, ys, strict=True)]
        s2 = sum(e * e for e in errs) / (n - 2)
        if s2 == 0.0:
            return a, b
        sum_x = sum(xs)
        sum_x2 = sum(x * x for x in xs)
        denom = n * sum_x2 - sum_x * sum_x
        weights: list[float] = []
        for x, e in zip(xs, errs, strict=True):
            # Leverage h and Cook's distance of a straight-line fit.
            h = (sum_x2 - 2.0 * sum_x * x + n * x * x) / denom
            cook = math.inf if h >= 1.0 else 0.5 / s2 * e * e * h / (1.0 - h) ** 2
            weight = 1.0 / x if cook <= cls.COOK_DISTANCE_LIMIT else 0.0
            weights.append(weight * weight)  # polyfit's w multiplies residuals, so squares get w**2
        kept = {x for x, w in zip(xs, weights, strict=True) if w > 0.0}
        if len(kept) < 2:
            return a, b
        return cls._least_squares(xs, ys, weights)

    def next_size(self) -> int:
        """Beam's next batch size from the points held now (uses the rng for the smear)."""
        lo, hi = self.config.min_batch_size, self.config.max_batch_size
        if lo == hi or not self._data:
            return lo
        if len(self._data) < 2:
            return int(max(min(hi, lo * self.MAX_GROWTH_FACTOR), lo + 1))
        keep = max(
            self.KEEP_MIN_POINTS,
            len(self._data) * self.KEEP_FRACTION_NUMERATOR // self.KEEP_FRACTION_DENOMINATOR,
        )
        trimmed = sorted(self._data)[:keep]
        a, b = self.fit([float(x) for x, _ in trimmed], [y for _, y in trimmed])
        a = max(a, 1e-10)
        b = max(b, 1e-20)
        cap = min(self._data[-1][0] * self.MAX_GROWTH_FACTOR, hi)
        target: float = hi
        target = min(target, (self.config.processing_time_threshold - a) / b)
        target = min(target, (a / b) * (1.0 / self.TARGET_BATCH_OVERHEAD - 1.0))
        jitter = len(self._data) % 2
        if len(self._data) >= self.SMEAR_MIN_POINTS:
            target += int(target * self.VARIANCE * 2.0 * (self._rng.random() - 0.5))
        return int(max(lo + jitter, min(target, cap)))

    def evaluate_scaling(self, history: Sequence[BatchResult]) -> ScalingDecision:
        """Record the batches not seen yet and compute Beam's next size."""
        for result in history[self._seen :]:
            self._record(result)
        self._seen = len(history)
        new = self.next_size()
        return _decision(self.config, self._size, new, "Beam estimator", {"points": float(len(self._data))})


class BinarySearchDownPolicy(_PeerBase):
    """Start at `max_batch_size`; halve on each whole-batch failure, never grow back.

    Only whole failures count, as only out-of-memory-like errors do for accelerate; the
    size never falls below `min_batch_size` (accelerate raises at zero instead).
    """

    REDUCTION_DIVISOR = 2

    def __init__(self, config: ScalingConfig, rng: random.Random | None = None) -> None:
        super().__init__(config, config.max_batch_size)

    def evaluate_scaling(self, history: Sequence[BatchResult]) -> ScalingDecision:
        """Halve when the last batch failed whole, else keep the size."""
        if history and history[-1].failed_whole:
            new = max(self.config.min_batch_size, self._size // self.REDUCTION_DIVISOR)
            return _decision(self.config, self._size, new, "whole-batch failure: halve")
        return _decision(self.config, self._size, self._size, "no failure")


PEERS: dict[str, Callable[[ScalingConfig, random.Random], Policy]] = {
    "fixed": FixedPolicy,
    "classic": ClassicRulePolicy,
    "aimd": AIMDPolicy,
    "beam": BeamBatchElementsPolicy,
    "binsearch": BinarySearchDownPolicy,
}
"""Peer name -> constructor taking (config, rng)."""
