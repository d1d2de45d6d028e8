"""A stand-in for a model call whose time and answer quality depend on the batch size.

`SimulatedLLM` really sleeps, for `fixed_cost_s + per_item_s * n + quad_s * n**2` seconds
(times `time_scale`, with a little deterministic jitter), and answers each item with a
confidence drawn so that the share of High answers (confidence >= 0.8) is `high_share(n)`:
`base_high_share` up to `knee` items, then falling by `slope` per extra item. Above
`fail_above` items the whole call raises, like a model whose context overflows.

Ready instances, usable as import paths such as `scaling_core.samples.simulated_llm:simulated_llm`:

- `simulated_llm`: defaults for a demo on the bundled catalogue with `ScalingConfig`'s
  defaults. Nominally a batch of 50 takes 2 s and one of 120 takes 3.4 s; with
  `time_scale=0.01` the 5,000 products need about 2 s of sleeping in all. The High share
  stays at 0.95 up to 120 items and reaches the 0.9 target at 145, so the best size lies
  just past the knee.
- `simulated_llm_cliff`: the same, but calls of more than 150 items fail.
- `simulated_llm_fast`: the same without sleeping, for tests and benchmarks.

Randomness is derived from (seed, batch size, item id) by hashing, so an item gets the same
answer whenever it is sent in a batch of the same size, in any process, and concurrent calls
from several threads share no state.

Example:
    >>> llm = SimulatedLLM(time_scale=0.0, item_failure_rate=0.0)
    >>> llm.expected_seconds(100), llm.high_share(200)
    (3.0, 0.79)
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["HIGH_CONFIDENCE", "SimulatedLLM", "simulated_llm", "simulated_llm_cliff", "simulated_llm_fast"]

HIGH_CONFIDENCE = 0.8
"""Answers at or above this confidence are the "High" ones that `high_share` counts."""

# Confidence ranges of High and of other answers: [0.8, 1.0) and [0.3, 0.8).
_HIGH_RANGE = (HIGH_CONFIDENCE, 1.0)
_OTHER_RANGE = (0.3, HIGH_CONFIDENCE)
_UNIT = 2.0**-53


class _ItemLike(Protocol):
    @property
    def id(self) -> str: ...


@dataclass(frozen=True)
class SimulatedLLM:
    """A configurable simulated model call; call an instance with a list of items.

    Args:
        fixed_cost_s: seconds of every call, whatever its size (latency, prompt overhead).
        per_item_s: seconds per item.
        quad_s: seconds per item squared (attention over a longer prompt); 0 for none.
        knee: largest batch size at which quality is still `base_high_share`.
        base_high_share: share of High answers up to the knee.
        slope: drop of the High share per item beyond the knee.
        fail_above: calls with more items than this raise RuntimeError; None for never.
        item_failure_rate: chance that one item fails on its own.
        time_jitter: relative spread of the call time, e.g. 0.05 for +-5 %.
        time_scale: multiplies every sleep; 0.01 runs a 3 s call in 30 ms, 0 never sleeps.
        seed: varies every random draw.
        sleep: called with the seconds to wait (tests pass a recorder).

    Example:
        >>> slow = SimulatedLLM(fixed_cost_s=2.0, knee=60, fail_above=100, time_scale=0.1)
        >>> slow([item]) # sleeps 0.1 * (2.0 + 0.02) s give or take the jitter
        [{'item_id': ..., 'success': True, 'confidence': 0.91..., 'output': {...}, 'error': None}]
    """

    fixed_cost_s: float = 1.0
    per_item_s: float = 0.02
    quad_s: float = 0.0
    knee: int = 120
    base_high_share: float = 0.95
    slope: float = 0.002
    fail_above: int | None = None
    item_failure_rate: float = 0.01
    time_jitter: float = 0.05
    time_scale: float = 0.01
    seed: int = 0
    sleep: Callable[[float], Any] = field(default=time.sleep, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("fixed_cost_s", "per_item_s", "quad_s", "slope", "time_scale"):
            value = getattr(self, name)
            if not value >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        for name in ("base_high_share", "item_failure_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie within [0, 1], got {value!r}")
        if not 0.0 <= self.time_jitter < 1.0:
            raise ValueError(f"time_jitter must lie within [0, 1), got {self.time_jitter!r}")
        if self.knee < 1:
            raise ValueError(f"knee must be at least 1, got {self.knee!r}")
        if self.fail_above is not None and self.fail_above < 1:
            raise ValueError(f"fail_above must be at least 1 or None, got {self.fail_above!r}")
        # Numbers the calls, so that an item retried in a later call gets fresh draws (a
        # retried item fails again only by chance). `next` on a count is atomic in CPython.
        object.__setattr__(self, "_calls", itertools.count())

    def expected_seconds(self, size: int) -> float:
        """Nominal time of a call with `size` items, before jitter and `time_scale`."""
        return self.fixed_cost_s + self.per_item_s * size + self.quad_s * size * size

    def high_share(self, size: int) -> float:
        """Expected share of High answers in a call with `size` items."""
        excess = max(0, size - self.knee)
        # Rounded so that 0.95 - 0.002 * 80 reads 0.79, not 0.7899999999999999.
        return round(max(0.0, self.base_high_share - self.slope * excess), 9)

    def __call__(self, items: Sequence[_ItemLike]) -> list[dict[str, Any]]:
        size = len(items)
        if self.fail_above is not None and size > self.fail_above:
            raise RuntimeError(
                f"simulated overload: a call of {size} items exceeds the limit of {self.fail_above}"
            )
        if size == 0:
            return []
        if self.time_scale > 0.0:
            jitter = 1.0 + self.time_jitter * (2.0 * self._uniforms("time", size, items[0].id)[0] - 1.0)
            self.sleep(self.expected_seconds(size) * jitter * self.time_scale)
        high_share = self.high_share(size)
        call = next(self._calls)  # type: ignore[attr-defined]
        return [self._answer(item.id, size, high_share, call) for item in items]

    def _answer(self, item_id: str, size: int, high_share: float, call: int) -> dict[str, Any]:
        fail_draw, high_draw, confidence_draw = self._uniforms(f"item-{call}", size, item_id)
        if fail_draw < self.item_failure_rate:
            return {
                "item_id": item_id,
                "success": False,
                "confidence": 0.0,
                "output": None,
                "error": "simulated item failure",
            }
        low, high = _HIGH_RANGE if high_draw < high_share else _OTHER_RANGE
        confidence = round(low + (high - low) * confidence_draw, 4)
        # Rounding must not lift an answer out of its range.
        confidence = min(confidence, high - 1e-4) if high < 1.0 else confidence
        return {
            "item_id": item_id,
            "success": True,
            "confidence": confidence,
            "output": {"answer": f"simulated answer for {item_id}", "batch_size": size},
            "error": None,
        }

    def _uniforms(self, purpose: str, size: int, item_id: str) -> tuple[float, float, float]:
        """Three independent uniform draws in [0, 1), fixed by (seed, purpose, size, item id).

        Item draws include the call's number in `purpose`: the n-th call of an instance
        answers the same way in every process.
        """
        key = f"{self.seed}\x1f{purpose}\x1f{size}\x1f{item_id}".encode()
        digest = hashlib.blake2b(key, digest_size=24).digest()
        return tuple(  # type: ignore[return-value]
            (int.from_bytes(digest[offset : offset + 8], "big") >> 11) * _UNIT for offset in (0, 8, 16)
        )


simulated_llm = SimulatedLLM()
simulated_llm_cliff = SimulatedLLM(fail_above=150)
simulated_llm_fast = SimulatedLLM(time_scale=0.0)
