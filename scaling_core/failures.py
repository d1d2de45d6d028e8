"""Whole-batch failures, classified by what they say about the batch size.

A batch fails whole when its processor call raises or times out. Such a failure means one
of three things, and only the first is about size:

- **size**: batches fail above some size and succeed below it (a payload limit, a context
  window, a timeout that grows with the batch). These failures make a failure ceiling.
- **transient**: a failure at a size that also succeeds (HTTP 5xx, a flaky network, a
  timeout now and then). The evidence is a later success with as many items or more:
  under a ceiling that size could never succeed. A streak of consecutive failures shares
  its cause, so one refuted failure makes its whole streak transient. A streak not refuted
  yet, at a size that succeeded before, is transient too when the window's own rate of
  refuted failures of the same kind of error (the exception's name) makes a streak that
  long likely (`FailureClassifier.STREAK_CHANCE`): a
  service that fails one call in ten fails two in a row every hundred, and a ceiling learned
  from each such pair would ratchet the size down for good.
- **deterministic**: every call fails whatever the size (a bug, a revoked key, an answer
  that breaks the processor contract). The evidence is a streak of `DETERMINISTIC_TRIES` calls
  that raised, and reached the minimum size, or spanned a `DETERMINISTIC_SPAN` range of sizes,
  or all broke the processor contract. The pipeline stops such a run; the manager does not
  learn a size from it.

`FailureClassifier.classify` reads the views of a window in order and is a pure function of them.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter

from scaling_core.results import BatchView

_FAILED = attrgetter("failed")


def _error_kind(error: str | None) -> str:
    """The exception's name of a failure's recorded error ("ValueError: bad key" -> "ValueError")."""
    return (error or "").split(":", 1)[0].strip()

CONTRACT_ERROR = "ProcessorContractError"
"""How a stage records an answer that broke the processor contract (the exception's name)."""


class FailureKind(enum.StrEnum):
    """What a whole-batch failure says about the batch size."""

    SIZE = "size"
    TRANSIENT = "transient"
    DETERMINISTIC = "deterministic"


@dataclass(frozen=True, slots=True)
class Failure:
    """One whole-batch failure of a window: where it is, its size, and its kind."""

    index: int
    size: int
    kind: FailureKind
    error: str | None
    run: int = 0
    """Index of the first failure of its run of failures in a row (which share a cause)."""


@dataclass(frozen=True, slots=True)
class FailureReport:
    """The failures of a window, classified.

    Attributes:
        failures: every whole-batch failure, oldest first.
        start: index from which the size failures and the successes are current. A size
            that had succeeded and now fails means the ceiling moved down: the successes
            before that are no evidence of what works now.
        streak: whole failures at the end of the window, in a row.
        deterministic: the trailing streak is deterministic.
        transient_rate: the share of the window's batches whose failure a later success
            refuted (0.0 without any).
    """

    failures: tuple[Failure, ...]
    start: int
    streak: int
    deterministic: bool
    transient_rate: float = 0.0

    @property
    def trailing(self) -> tuple[Failure, ...]:
        """The failures of the trailing streak, oldest first."""
        return self.failures[len(self.failures) - self.streak :] if self.streak else ()

    def size_failures(self) -> list[Failure]:
        """The current size failures: those that make a failure ceiling."""
        return [f for f in self.failures if f.kind is FailureKind.SIZE and f.index >= self.start]

    def count(self, kind: FailureKind) -> int:
        """How many failures of `kind` the window holds."""
        return sum(1 for failure in self.failures if failure.kind is kind)


class FailureClassifier:
    """Classifies the whole-batch failures of a window (see the module docstring).

    Args:
        min_batch_size: the smallest size the manager may choose; a streak that reached it
            has tried every size there is.
    """

    SAME_SIZE = 1.03
    """Sizes within this ratio are one size where a batch size is looked up, not where a
    failure is refuted (a cliff can lie between two sizes a few items apart)."""
    DETERMINISTIC_TRIES = 3
    """Failures in a row before a streak can be called deterministic: two in a row happen to
    a flaky service (a few percent squared is still seen in a long run), three at falling
    sizes without one success do not."""
    DETERMINISTIC_SPAN = 4.0
    """A streak whose sizes span this ratio tried sizes a quarter of each other (two halvings):
    a ceiling so far below every size tried is not what such a streak is taken for."""
    STREAK_CHANCE = 0.05
    """Expected number of streaks of k failures or more among the window's N batches, when
    calls fail independently at its rate r of transient failures (about N * r^k), at or above
    which an unrefuted streak at a size that succeeded is taken for chance: a test at the 5%
    level. Without transient failures on record (r = 0) no streak is chance, and a size that
    succeeded and then fails twice means the ceiling moved down, as before."""

    def __init__(self, min_batch_size: int) -> None:
        if min_batch_size <= 0:
            raise ValueError(f"min_batch_size must be positive, got {min_batch_size}")
        self.min_batch_size = min_batch_size

    def classify(self, views: Sequence[BatchView]) -> FailureReport:
        """Classify every whole failure of `views` (oldest first)."""
        if not any(map(_FAILED, views)):
            return FailureReport(failures=(), start=0, streak=0, deterministic=False)
        count = len(views)
        # A failure is refuted by a later success with as many items or more.
        refuted = [False] * count
        largest_later = 0
        for index in range(count - 1, -1, -1):
            view = views[index]
            if view.failed:
                refuted[index] = largest_later >= view.asked
            elif view.items > largest_later:
                largest_later = view.items
        # Refuted failures per kind of error (the exception's name): a new kind of failure is
        # no flaky call of the kind on record.
        refuted_kinds = Counter(_error_kind(views[k].error) for k in range(count) if refuted[k])
        rate = refuted_kinds.total() / count

        failures: list[Failure] = []
        start = 0
        largest_before = 0  # the largest success since `start`
        kind = FailureKind.SIZE
        index = 0
        streak = 0
        while index < count:
            view = views[index]
            if not view.failed:
                largest_before = max(largest_before, view.items)
                index += 1
                continue
            end = index
            while end < count and views[end].failed:
                end += 1
            members = range(index, end)
            sizes = [views[k].asked for k in members]
            errors = [views[k].error or "" for k in members]
            if any(refuted[k] for k in members):
                kind = FailureKind.TRANSIENT
            elif self._deterministic(sizes, errors):
                kind = FailureKind.DETERMINISTIC
            elif largest_before >= min(sizes) and self._chance(errors, refuted_kinds, count):
                kind = FailureKind.TRANSIENT
            else:
                kind = FailureKind.SIZE
                # A size that succeeded now fails twice (once may be a flaky call): the
                # ceiling moved down.
                settled = end < count or end - index > 1
                if settled and largest_before >= min(sizes):
                    start = index
                    largest_before = 0  # the successes before are stale now
            failures.extend(Failure(k, views[k].asked, kind, views[k].error, run=index) for k in members)
            streak = end - index if end == count else 0
            index = end
        return FailureReport(
            failures=tuple(failures),
            start=start,
            streak=streak,
            deterministic=streak > 0 and kind is FailureKind.DETERMINISTIC,
            transient_rate=rate,
        )

    def _chance(self, errors: Sequence[str], refuted_kinds: Counter[str], count: int) -> bool:
        """Whether a streak with `errors` is likely among `count` batches, at the rate of
        refuted failures of its kind of error (`STREAK_CHANCE`)."""
        kinds = {_error_kind(error) for error in errors}
        if len(kinds) != 1:
            return False
        rate = refuted_kinds[kinds.pop()] / count
        return count * rate ** len(errors) >= self.STREAK_CHANCE

    def _deterministic(self, sizes: Sequence[int], errors: Sequence[str]) -> bool:
        # Only calls that raised (or timed out) count: a batch whose every item failed on its
        # own is the items' failure, and each item is failed for good after its attempts.
        if len(sizes) < self.DETERMINISTIC_TRIES or not all(errors):
            return False
        if all(error.startswith(CONTRACT_ERROR) for error in errors):
            return True
        smallest = min(sizes)
        return smallest <= self.min_batch_size * self.SAME_SIZE or max(sizes) >= self.DETERMINISTIC_SPAN * smallest
