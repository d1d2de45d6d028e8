"""The shift tests of the evidence window: where the cost or the quality of a workload changed.

`EvidenceWindow.of` cuts its evidence at the splits these tests find; their thresholds are
the window's constants (`EvidenceWindow.CHANGE_Z` and the rest), passed in as `window`.

- `cost_change_point`: the first batches after a split against the regime just before it,
  on log seconds at unchanged sizes (costs that alternate);
- `pooled_change_point`: every later batch against all older batches of its size (a drift
  at sizes every regime shares);
- `step_change_point`: the batches after a surprising one, at whatever size, against the
  line fitted before it (a cost that stepped while the manager moved the size);
- `rise_under_test`: a batch far over the time limit and that line, taken for a step until
  the batches after it rule it out;
- `quality_change_point`: later High counts against those the older share at the same size
  predicts.
"""

from __future__ import annotations

import math
import operator
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from itertools import islice
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar

from scaling_core._evidence import (
    CostFit,
    WeightedCostFit,
    _inverse,
    fit_line,
    fit_weighted_costs,
    log_ratio,
    median,
    robust_spread,
)

if TYPE_CHECKING:
    from scaling_core.window import EvidenceWindow, Observation, Timing


def _shifted(
    difference: float, spread: float, within: float, dof: float, window: type[EvidenceWindow], *, few: bool = True
) -> bool:
    """|z| > `CHANGE_Z` for the summed shift `difference` with variance `spread` x the pooled
    within-size variance within/dof (at least `MIN_NOISE` squared).

    With `few` (a spread from a short reference) the variance is scaled by dof/(dof - 2), the
    variance of Student's t over the normal's, and with fewer than `CHANGE_MIN_DOF` degrees of
    freedom nothing is judged: one lucky pair would make every difference a shift.
    """
    if spread <= 0 or (few and dof < window.CHANGE_MIN_DOF):
        return False
    variance = max(within / dof if dof else 0.0, window.MIN_NOISE**2)
    if few:
        variance *= dof / (dof - 2)
    return abs(difference) / math.sqrt(variance * spread) > window.CHANGE_Z


class CleanRun(NamedTuple):
    """Splits whose verdict is final and no change, in a row: what lets a shift test skip
    them on the next call (`cost_change_point`, `step_change_point`)."""

    newest: object
    """The batch of the newest split of the run."""
    length: int
    """Splits in the run, from `newest` back (for the step test, each judged on a reference of
    the `CHANGE_REFERENCE` batches just before it: no cut moved its start)."""


def cost_change_point(
    timings: Sequence[Timing],
    window: type[EvidenceWindow],
    *,
    keys: Sequence[object] | None = None,
    memo: dict[int, tuple[object, bool]] | None = None,
    logs: Sequence[float] | None = None,
    ids: Sequence[int] | None = None,
) -> int:
    """Index from which the cost evidence is current (0 when the cost did not shift).

    A split is judged on the `CHANGE_AFTER` batches after it, each compared with the batches
    of about its size (buckets `NEIGHBOURHOOD` wide: timing noise dwarfs the size effect
    within them) among the `CHANGE_REFERENCE` batches just before it, on log seconds:

        z = sum(after - mean_before) / sqrt(s^2 * sum(n_a * (1 + n_a/n_b)))

    s^2 the spread those older batches show within a size (the newer ones would inflate it
    with the very shift under test). Only the regime just before the split is the reference:
    a cost that alternates has batches of the new cost at the new sizes further back, and
    pooling them would hide the change and inflate the spread. Only the first batches after
    the split are judged: they ran at the sizes of before, and later ones at sizes that older
    regimes may have used. So a split's verdict is final once its batches are in, and a change
    stays found while it is in the window. A batch with no such neighbour adds nothing. Every
    split up to `CHANGE_SCAN` back is tried, newest first; the first with |z| > `CHANGE_Z`
    wins.

    With `keys` (one object per timing, its batch) and a `memo` that the caller keeps between
    calls on a growing history, final verdicts are remembered by key: only the newest
    `CHANGE_AFTER` + 1 splits are judged again, with the same answer. `logs` and `ids` (log
    seconds and `NEIGHBOURHOOD` buckets of the timings), when given, save computing them.
    """
    count = len(timings)
    if count < 2:
        return 0
    last = max(count - window.CHANGE_SCAN, 1)
    kept: dict[int, tuple[object, bool]] = {}
    lookup = memo if keys is not None else None
    found = 0
    for split, shifted in _judged_splits(timings, window, last, logs, ids):
        final = split + window.CHANGE_AFTER <= count
        if final and keys is not None:
            kept[id(keys[split])] = (keys[split], shifted)
        if shifted:
            found = split
            break
        if final and split > 0 and keys is not None and isinstance(memo, ShiftMemo) and (clean := memo.clean):
            # The newest final verdict is no shift, and so are the remembered ones behind it as
            # far as the scan reaches: they need no steps, nor a new memo.
            if keys[split - 1] is clean.newest and clean.length >= split - last:
                memo[id(keys[split])] = (keys[split], False)
                memo.clean = CleanRun(keys[split], clean.length + 1)
                if len(memo) > 2 * window.CHANGE_SCAN:
                    live = {id(key) for key in keys[last:]}
                    for stale in [number for number in memo if number not in live]:
                        del memo[stale]
                return 0
        if final and lookup and keys is not None:
            # The older splits' verdicts are final: remembered, they need no steps.
            older = [(back, lookup.get(id(keys[back]))) for back in range(split - 1, last - 1, -1)]
            if all(entry is not None and entry[0] is keys[back] for back, entry in older):
                remembered = [(back, entry) for back, entry in older if entry is not None]
                for back, entry in remembered:
                    kept[id(keys[back])] = entry
                    if entry[1]:
                        found = back
                        break
                break
            lookup = None  # some are not remembered: judge them
    if memo is not None:
        memo.clear()
        memo.update(kept)
        if isinstance(memo, ShiftMemo) and keys is not None:
            memo.clean = _clean_run(memo, keys, count - window.CHANGE_AFTER, last)
    return found


_Key = TypeVar("_Key")
_Entry = TypeVar("_Entry")


class RunMemo(dict[_Key, _Entry], Generic[_Key, _Entry]):
    """A shift test's entries by key, and the run of splits known to show no change (`clean`)."""

    clean: CleanRun | None = None

    def clear(self) -> None:
        super().clear()
        self.clean = None


class ShiftMemo(RunMemo[int, tuple[object, bool]]):
    """What `cost_change_point` remembers between calls: the final verdict of each split, by
    the id of its batch (an entry holds the batch: no id is reused while it lives), and the
    run of splits known to show no shift."""


def _clean_run(memo: ShiftMemo, keys: Sequence[object], settled: int, last: int) -> CleanRun | None:
    """The run of remembered no-shift verdicts from the split at `settled` back to `last`."""
    if not 0 <= settled < len(keys):
        return None
    length = 0
    for split in range(settled, last - 1, -1):
        entry = memo.get(id(keys[split]))
        if entry is None or entry[0] is not keys[split] or entry[1]:
            break
        length += 1
    return CleanRun(keys[settled], length) if length else None


def _judged_splits(
    timings: Sequence[Timing],
    window: type[EvidenceWindow],
    last: int,
    known_logs: Sequence[float] | None = None,
    known_ids: Sequence[int] | None = None,
) -> Iterator[tuple[int, bool]]:
    """(split, |z| > CHANGE_Z) for every split from the newest back to `last` (see
    `cost_change_point`). Moving the split back one batch moves one batch from the reference
    to the newer side, one into the reference and one out of the newer side: every sum is
    updated in O(1)."""
    count = len(timings)
    ratio = window.NEIGHBOURHOOD
    # Bucket and log seconds per batch, computed as the scan reaches them (a remembered scan
    # stops after a few splits).
    ids: dict[int, int] = {}
    logs: dict[int, float] = {}

    def read(index: int) -> tuple[int, float]:
        if known_logs is not None and known_ids is not None:
            return known_ids[index], known_logs[index]
        if index not in ids:
            size, seconds = timings[index]
            ids[index] = _bucket(size, ratio)
            logs[index] = math.log(seconds)
        return ids[index], logs[index]

    reference, after = window.CHANGE_REFERENCE, window.CHANGE_AFTER
    # Per size bucket: count, sum and sum of squares of the reference (before the split);
    # count and sum of the newer batches.
    b_n: dict[int, int] = defaultdict(int)
    b_sum: dict[int, float] = defaultdict(float)
    b_sq: dict[int, float] = defaultdict(float)
    a_n: dict[int, int] = defaultdict(int)
    a_sum: dict[int, float] = defaultdict(float)
    for index in range(max(count - reference, 0), count):
        key, value = read(index)
        b_n[key] += 1
        b_sum[key] += value
        b_sq[key] += value * value
    # The reference's pooled within-bucket sum of squares and its degrees of freedom; the
    # newer batches' shift from the reference means, and its variance in units of s^2.
    within = sum(b_sq[k] - b_sum[k] * b_sum[k] / n for k, n in b_n.items() if n > 1)
    dof = sum(n - 1 for n in b_n.values() if n > 1)
    difference = spread = 0.0
    for split in range(count - 1, last - 1, -1):
        moved, moved_log = read(split)
        entering, entering_log = read(split - reference) if split >= reference else (None, 0.0)
        leaving, leaving_log = read(split + after) if split + after < count else (None, 0.0)
        touched = [moved]
        if entering is not None and entering != moved:
            touched.append(entering)
        if leaving is not None and leaving not in touched:
            touched.append(leaving)
        for key in touched:  # take the buckets' terms out ...
            n_old = b_n[key]
            if n_old:
                mean = b_sum[key] / n_old
                if n_old > 1:
                    within -= b_sq[key] - b_sum[key] * mean
                    dof -= n_old - 1
                n_new = a_n[key]
                difference -= a_sum[key] - n_new * mean
                spread -= n_new * (1 + n_new / n_old)
        b_n[moved] -= 1  # ... move the batches ...
        b_sum[moved] -= moved_log
        b_sq[moved] -= moved_log * moved_log
        a_n[moved] += 1
        a_sum[moved] += moved_log
        if entering is not None:
            b_n[entering] += 1
            b_sum[entering] += entering_log
            b_sq[entering] += entering_log * entering_log
        if leaving is not None:
            a_n[leaving] -= 1
            a_sum[leaving] -= leaving_log
        for key in touched:  # ... and put their terms back
            n_old = b_n[key]
            if n_old:
                mean = b_sum[key] / n_old
                if n_old > 1:
                    within += b_sq[key] - b_sum[key] * mean
                    dof += n_old - 1
                n_new = a_n[key]
                difference += a_sum[key] - n_new * mean
                spread += n_new * (1 + n_new / n_old)
        yield split, _shifted(difference, spread, within, dof, window)


def _geometric_backs(length: int, window: type[EvidenceWindow], start: int | None = None) -> tuple[int, ...]:
    """Batches after each split tried beyond `start` (`SHOCK_SCAN` by default), under
    `length`: geometric, `CHANGE_CHECKPOINT_GROWTH` apart."""
    return _backs(length, window.SHOCK_SCAN if start is None else start, window.CHANGE_CHECKPOINT_GROWTH)


@lru_cache(maxsize=512)
def _backs(length: int, start: int, growth: float) -> tuple[int, ...]:
    """`_geometric_backs`, computed once per length: every decision asks for the same few."""
    backs: list[int] = []
    back = max(start, 1)
    while True:
        back = max(back + 1, int(back * growth))
        if back >= length:
            return tuple(backs)
        backs.append(back)


def slid(previous: Sequence[object], current: Sequence[object], max_dropped: int) -> tuple[int, int] | None:
    """(dropped, added) when `current` is `previous` less `dropped` (at most `max_dropped`)
    at the front plus `added` (0 or 1) at the end, by identity; None otherwise (or when
    `previous` is empty)."""
    count = len(current)
    added = 1 if previous and count and current[-1] is not previous[-1] else 0
    dropped = len(previous) - (count - added)
    if not previous or not 0 <= dropped <= max_dropped:
        return None
    # Element by element from `dropped` on, without copying either list (`map` stops with
    # the shorter: `current` has `added` more).
    if not all(map(operator.is_, islice(previous, dropped, None), current)):
        return None
    return dropped, added


class _CarriedSums:
    """Sums a shift test carries from one call to the next: the batches it last read, and
    how the next call's batches relate to them (`_carry`)."""

    RESYNC = 1000
    """Calls between rebuilds: bounds the rounding the running sums collect (about 1e-13
    relative after a thousand updates, far below any test's margin)."""
    MAX_DROPPED = 4
    """Batches that may leave the front between two calls and still be updated in place."""

    def __init__(self) -> None:
        self.keys: list[object] = []
        self.updates = 0

    def _carry(self, keys: Sequence[object], deepest: int) -> tuple[int, int] | None:
        """`slid` of the last call's batches to `keys`, when every split the last call had
        (`deepest` batches after it at most) kept the batches that left before it; None when
        the sums must be rebuilt (another history, too many changes, or `RESYNC` updates
        since the last build)."""
        carried = slid(self.keys, keys, self.MAX_DROPPED)
        if carried is None or self.updates >= self.RESYNC or deepest > len(self.keys) - carried[0]:
            return None
        self.updates += 1
        return carried


class _SplitTerms:
    """One split's terms, a tuple per size bucket, and their running column sums (`sums`):
    replacing a bucket's term (`put_all`) updates the sums in O(1). `counted` is the number of
    terms positive in column `COUNTED`: at none the test has nothing to judge, whatever
    rounding the running sums kept; with no term at all the sums are reset to zero."""

    __slots__ = ("counted", "sums", "terms")
    COUNTED = 0

    def __init__(self, width: int) -> None:
        self.terms: dict[int, tuple[float, ...]] = {}
        self.sums = [0.0] * width
        self.counted = 0

    def put_all(self, changes: Iterable[tuple[int, tuple[float, ...] | None]]) -> None:
        """Make each `term` the term of its bucket `key` (None: it has none), in order."""
        terms, sums, counted, column = self.terms, self.sums, self.counted, self.COUNTED
        add, sub = operator.add, operator.sub
        for key, term in changes:
            old = terms.pop(key, None)
            if term is not None:
                terms[key] = term
                if old is None:
                    sums = list(map(add, sums, term))
                else:  # the common case: out, then in
                    sums = list(map(add, map(sub, sums, old), term))
                    counted -= old[column] > 0
                counted += term[column] > 0
            elif old is not None:
                counted -= old[column] > 0
                sums = list(map(sub, sums, old)) if terms else [0.0] * len(old)
        self.sums, self.counted = sums, counted

    def exact(self) -> list[float]:
        """The column sums afresh (`math.fsum`: correctly rounded, the same in any order)."""
        return [math.fsum(column) for column in zip(*self.terms.values())]


def pooled_change_point(
    timings: Sequence[Timing],
    window: type[EvidenceWindow],
    *,
    newer_than: int = 0,
    logs: Sequence[float] | None = None,
    ids: Sequence[int] | None = None,
    keys: Sequence[object] | None = None,
    memo: PooledMemo | None = None,
) -> int:
    """Index from which the cost evidence is current by the pooled test (0 when nothing shifted).

    Every batch after a split is compared with *all* the older batches of about its size, on
    log seconds, in units of the spread those older batches show within a size: the same z as
    `cost_change_point`. It sees a lasting shift at sizes that older batches of any regime
    share (a drift), as its evidence grows with every batch after the split; the local test
    sees a change at sizes only the regime just before it used (costs that alternate). The
    most recent split with |z| > `CHANGE_Z` wins; every split up to `SHOCK_SCAN` batches back
    is tried, geometric ones beyond. Moving the split back one batch updates every sum in O(1);
    the older side's sums at the geometric splits are kept per split (`PooledMemo`: with
    `keys`, one object per timing, and a `memo` the caller keeps, carried from call to call).
    Splits at or before `newer_than` (a cut found already) are not tried. `logs` and `ids`
    (log seconds and `NEIGHBOURHOOD` buckets of the timings), when given, save computing them.
    """
    count = len(timings)
    if count < 2:
        return 0
    if ids is None:
        ids = _buckets([n for n, _ in timings], window.NEIGHBOURHOOD)
    if logs is None:
        logs = [math.log(t) for _, t in timings]
    if memo is None or keys is None:
        memo = PooledMemo()
        keys = [None] * count
    whole, coarse = memo.update(logs, ids, keys, window)
    n_old, s_old, q_old = whole.n, whole.s, whole.q
    moved_n: dict[int, int] = {}
    moved_sum: dict[int, float] = {}
    moved_sq: dict[int, float] = {}
    a_n: dict[int, int] = {}
    a_sum: dict[int, float] = {}
    # The older side starts as every batch: its pooled within-bucket sum of squares and
    # degrees of freedom.
    spread_sum, spread_dof = whole.sums[0], whole.sums[1]
    difference = spread = 0.0
    for back in range(1, min(window.SHOCK_SCAN, count - 1) + 1):
        index = count - back
        if index <= newer_than:
            return 0
        key, value = ids[index], logs[index]
        b_n = moved_n.get(key, n_old[key])
        b_sum = moved_sum.get(key, s_old[key])
        b_sq = moved_sq.get(key, q_old[key])
        n_new, new_sum = a_n.get(key, 0), a_sum.get(key, 0.0)
        # Take the bucket's old contributions out ...
        if b_n > 1:
            spread_sum -= b_sq - b_sum * b_sum / b_n
            spread_dof -= b_n - 1
        if n_new:
            difference -= new_sum - n_new * b_sum / b_n
            spread -= n_new * (1 + n_new / b_n)
        # ... move the batch from the older side to the newer one ...
        b_n -= 1
        n_new += 1
        b_sum -= value
        b_sq -= value * value
        new_sum += value
        moved_n[key], moved_sum[key], moved_sq[key] = b_n, b_sum, b_sq
        a_n[key], a_sum[key] = n_new, new_sum
        # ... and put them back. Later batches' log seconds minus what the older mean of
        # their size predicts; its variance in units of the within-size spread.
        if b_n > 1:
            spread_sum += b_sq - b_sum * b_sum / b_n
            spread_dof += b_n - 1
        if b_n:
            difference += new_sum - n_new * b_sum / b_n
            spread += n_new * (1 + n_new / b_n)
        if _shifted(difference, spread, spread_sum, spread_dof, window, few=False):
            return index
    for back, split in coarse:
        if count - back <= newer_than:
            return 0
        if split.shifted(window):
            return count - back
    return 0


class _PooledSplit(_SplitTerms):
    """The older side of one split of the pooled test: per bucket, the count, sum and sum of
    squares of its log seconds; each bucket's term (`_pooled_term`) holds the within-bucket
    sum of squares and degrees of freedom of the older side, the newer batches' summed
    difference from the older mean, and its variance factor."""

    __slots__ = ("n", "q", "s")
    COUNTED = 3  # a bucket on both sides has a positive variance factor

    def __init__(self, n: dict[int, int], s: dict[int, float], q: dict[int, float]) -> None:
        super().__init__(4)
        self.n, self.s, self.q = n, s, q

    def move(
        self, changes: Iterable[tuple[int, Sequence[float]]], total_n: dict[int, int], total_sum: dict[int, float]
    ) -> None:
        """Change the older side's sums of each bucket `key` by its `(count, total, square)`,
        in order, and its term with the totals over all batches (`total_n`, `total_sum`, read
        after the change: the sums over all batches may be these very sums)."""
        n, s, q = self.n, self.s, self.q
        terms: list[tuple[int, tuple[float, ...] | None]] = []
        for key, (count, total, square) in changes:
            n_old, s_old, q_old = n.get(key, 0), s.get(key, 0.0), q.get(key, 0.0)
            if count or total or square:
                n_old += int(count)
                s_old += total
                q_old += square
                n[key], s[key], q[key] = n_old, s_old, q_old
            terms.append((key, _pooled_term(n_old, s_old, q_old, total_n.get(key, 0), total_sum.get(key, 0.0))))
        self.put_all(terms)

    def shifted(self, window: type[EvidenceWindow]) -> bool:
        """`_shifted` of the running sums, unless they land within rounding of `CHANGE_Z`;
        then of the terms summed afresh (`_SplitTerms.exact`)."""
        if not self.counted:
            return False
        within, dof, difference, spread = self.sums
        variance = max(within / dof if dof else 0.0, window.MIN_NOISE**2)
        value = abs(difference) / math.sqrt(variance * spread) if spread > 0 else math.inf
        if abs(value - window.CHANGE_Z) > 1e-6 * window.CHANGE_Z:
            return value > window.CHANGE_Z
        within, dof, difference, spread = self.exact()
        return _shifted(difference, spread, within, dof, window, few=False)


def _pooled_term(
    n_old: int, s_old: float, q_old: float, total_n: int, total_sum: float
) -> tuple[float, int, float, float] | None:
    """A bucket's (within sum of squares, its degrees of freedom, difference, spread) for a
    split with `n_old` of its `total_n` batches before it; None when it adds nothing."""
    n_new = total_n - n_old
    within, dof = (q_old - s_old * s_old / n_old, n_old - 1) if n_old > 1 else (0.0, 0)
    difference, spread = (total_sum - s_old - n_new * s_old / n_old, n_new * (1 + n_new / n_old)) if n_old and n_new else (0.0, 0.0)
    if not dof and not spread:
        return None
    return within, dof, difference, spread


def quality_change_point(
    observations: Sequence[Observation],
    window: type[EvidenceWindow],
    *,
    ids: Sequence[int] | None = None,
    keys: Sequence[object] | None = None,
    memo: QualityMemo | None = None,
) -> int:
    """Index from which the quality evidence is current (0 when nothing shifted).

    Each candidate split compares the batches after it with the batches before it at the
    same size (buckets `SAME_SIZE` wide): observed High counts against those the older share
    at that size predicts, summed into one z. The most recent split with |z| > `CHANGE_Z`
    wins, so a shift found once stays found while its evidence lasts. `ids` (the `SAME_SIZE`
    buckets of the sizes), when given, save computing them.

    With `keys` (one object per observation, its batch) and a `memo` the caller keeps between
    calls, each split's sums are carried from the previous call and updated by the batches
    that came, left, or crossed the split (`QualityMemo`): a few terms per split instead of
    a pass over every batch.
    """
    count = len(observations)
    if count <= window.CHANGE_BATCHES:
        if memo is not None:
            memo.reset()
        return 0
    if ids is None:
        ids = _buckets([size for size, _, _ in observations], window.SAME_SIZE)
    if memo is None or keys is None:
        memo = QualityMemo()
        keys = [None] * count
    for back, split in memo.update(observations, ids, keys, window):
        if split.shifted(window.CHANGE_Z):
            return count - back
    return 0


def _quality_backs(count: int, window: type[EvidenceWindow]) -> tuple[int, ...]:
    """Batches after each split `quality_change_point` tries: `CHANGE_BATCHES`, then geometric
    steps back, newest first."""
    first = window.CHANGE_BATCHES
    return (first, *_geometric_backs(count, window, start=first)) if first < count else ()


class _QualitySplit(_SplitTerms):
    """One split of the quality test: per bucket, the High items and items of the batches
    before it; each bucket's term (`_quality_term`) holds the observed and expected High
    items after the split and their variance."""

    __slots__ = ("high", "items")
    COUNTED = 2  # a share strictly between 0 and 1 before the split gives a positive variance

    def __init__(self, high: dict[int, int], items: dict[int, int]) -> None:
        super().__init__(3)
        self.high = high
        self.items = items

    def move(
        self,
        changes: Iterable[tuple[int, Sequence[int]]],
        total_high: dict[int, int],
        total_items: dict[int, int],
        min_items: float,
    ) -> None:
        """Change the older side's sums of each bucket `key` by its `(high, items)`, and its
        term with its totals over all batches (`total_high`, `total_items`)."""
        highs, items_of = self.high, self.items
        terms: list[tuple[int, tuple[float, ...] | None]] = []
        for key, (high, items) in changes:
            high_before, n_before = highs.get(key, 0), items_of.get(key, 0)
            if high or items:
                high_before += high
                n_before += items
                highs[key], items_of[key] = high_before, n_before
            terms.append((key, _quality_term(high_before, n_before, total_high[key], total_items[key], min_items)))
        self.put_all(terms)

    def shifted(self, z: float) -> bool:
        """|observed - expected| / sqrt(variance) > `z`, from the running sums unless they
        land within rounding of `z`; then from the terms summed afresh (`exact`)."""
        if not self.counted:
            return False
        observed, expected, variance = self.sums
        value = abs(observed - expected) / math.sqrt(variance) if variance > 0 else math.inf
        if abs(value - z) > 1e-6 * z:
            return value > z
        observed, expected, variance = self.exact()
        return variance > 0 and abs(observed - expected) / math.sqrt(variance) > z


def _quality_term(
    high_before: int, n_before: int, total_high: int, total_items: int, min_items: float
) -> tuple[float, float, float] | None:
    """A bucket's (observed, expected, variance) High items after a split, or None when it
    has no batch after the split or too few items before it. The variance: the binomial
    spread of the new counts plus the uncertainty of the old share."""
    n_after = total_items - n_before
    if n_before < min_items or n_after <= 0:
        return None
    share = high_before / n_before
    return total_high - high_before, n_after * share, n_after * share * (1 - share) * (1 + n_after / n_before)


class QualityMemo(_CarriedSums):
    """What `quality_change_point` keeps between calls: the batches it read, the totals per
    bucket, and each split's sums (`_QualitySplit`), by how many batches lie after it.

    When the next call's batches are the last ones less a few dropped at the front, plus at
    most one new batch, each split's sums are updated by the batches that left (out of its
    older side), the new one (into its newer side) and the one that crossed it as it moved
    forward: O(splits) work. Any other change, and every `RESYNC` calls (the z terms are
    running sums of floats), rebuilds them from the batches.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        super().__init__()
        self.observations: list[Observation] = []
        self.ids: list[int] = []
        self.high: dict[int, int] = {}
        self.items: dict[int, int] = {}
        self.splits: dict[int, _QualitySplit] = {}

    def update(
        self,
        observations: Sequence[Observation],
        ids: Sequence[int],
        keys: Sequence[object],
        window: type[EvidenceWindow],
    ) -> list[tuple[int, _QualitySplit]]:
        """The sums of every split of these batches, newest first, carried from the last call."""
        carried = self._carry(keys, max(self.splits, default=0))
        if carried is None:
            self._rebuild(list(observations), list(ids), list(keys), window)
            return self._ordered()
        dropped, added = carried
        count, old_count = len(keys), len(self.keys)
        min_items = window.CHANGE_MIN_ITEMS
        # Totals per bucket less the batches that left, plus the new one.
        high, items = self.high, self.items
        changes = [(self.ids[index], self.observations[index], -1) for index in range(dropped)]
        changes += [(ids[index], observations[index], 1) for index in range(count - added, count)]
        for key, (_, h, n), sign in changes:
            high[key] = high.get(key, 0) + sign * h
            items[key] = items.get(key, 0) + sign * n
        # Splits by batches after them: those the new count no longer has go, new ones are built.
        backs = _quality_backs(count, window)
        for back in [back for back in self.splits if back not in backs]:
            del self.splits[back]
        gone = [(self.ids[index], self.observations[index]) for index in range(dropped)]
        for back, split in self.splits.items():
            # Older side: less the batches that left, plus those that crossed the split as it
            # moved forward (indices `old_count - back - dropped` up to `count - back` now).
            moved: dict[int, list[int]] = {key: [0, 0] for key, _, _ in changes}
            for key, (_, h, n) in gone:
                moved[key][0] -= h
                moved[key][1] -= n
            begin, end = old_count - back - dropped, count - back
            for key, (_, h, n) in zip(ids[begin:end], observations[begin:end]):
                change = moved.setdefault(key, [0, 0])
                change[0] += h
                change[1] += n
            split.move(moved.items(), high, items, min_items)
        for back in backs:
            if back not in self.splits:
                self.splits[back] = self._split(ids, observations, count - back, min_items)
        self.keys, self.observations, self.ids = list(keys), list(observations), list(ids)
        return self._ordered()

    def _ordered(self) -> list[tuple[int, _QualitySplit]]:
        return sorted(self.splits.items())

    def _split(
        self, ids: Sequence[int], observations: Sequence[Observation], split: int, min_items: float
    ) -> _QualitySplit:
        """The sums of the split before index `split`, from the batches before it."""
        high: dict[int, int] = {}
        items: dict[int, int] = {}
        for key, (_, h, n) in zip(ids[:split], observations[:split]):
            high[key] = high.get(key, 0) + h
            items[key] = items.get(key, 0) + n
        return self._terms(_QualitySplit(high, items), set(ids[split:]), min_items)

    def _terms(self, split: _QualitySplit, after: set[int], min_items: float) -> _QualitySplit:
        split.move([(key, (0, 0)) for key in after], self.high, self.items, min_items)
        return split

    def _rebuild(
        self, observations: list[Observation], ids: list[int], keys: list[object], window: type[EvidenceWindow]
    ) -> None:
        """Every sum from the batches: one pass oldest first, the older side's sums copied at
        each split."""
        self.keys, self.observations, self.ids = keys, observations, ids
        self.updates = 0
        count = len(observations)
        backs = _quality_backs(count, window)
        high: dict[int, int] = {}
        items: dict[int, int] = {}
        snapshots: dict[int, tuple[dict[int, int], dict[int, int]]] = {}
        wanted = {count - back: back for back in backs}
        for index, (key, (_, h, n)) in enumerate(zip(ids, observations, strict=True)):
            if index in wanted:
                snapshots[wanted[index]] = (dict(high), dict(items))
            high[key] = high.get(key, 0) + h
            items[key] = items.get(key, 0) + n
        self.high, self.items = high, items
        min_items = window.CHANGE_MIN_ITEMS
        self.splits = {
            back: self._terms(_QualitySplit(*snapshots[back]), set(ids[count - back :]), min_items) for back in backs
        }


class PooledMemo(_CarriedSums):
    """What `pooled_change_point` keeps between calls: the batches it read, the sums over all
    of them (`whole`, a split with no batch after it) and the older side of each geometric
    split (`_PooledSplit`), by how many batches lie after it, updated as `QualityMemo`'s are."""

    def __init__(self) -> None:
        super().__init__()
        self.logs: list[float] = []
        self.ids: list[int] = []
        self.whole = _PooledSplit({}, {}, {})
        self.splits: dict[int, _PooledSplit] = {}

    def update(
        self, logs: Sequence[float], ids: Sequence[int], keys: Sequence[object], window: type[EvidenceWindow]
    ) -> tuple[_PooledSplit, list[tuple[int, _PooledSplit]]]:
        """The sums over every batch and those of each geometric split, newest first."""
        carried = self._carry(keys, max(self.splits, default=0))
        if carried is None:
            self._rebuild(list(logs), list(ids), list(keys), window)
            return self.whole, sorted(self.splits.items())
        dropped, added = carried
        count, old_count = len(keys), len(self.keys)
        whole = self.whole
        changes = [(self.ids[index], self.logs[index], -1) for index in range(dropped)]
        changes += [(ids[index], logs[index], 1) for index in range(count - added, count)]
        whole.move(
            [(key, (sign, sign * value, sign * value * value)) for key, value, sign in changes], whole.n, whole.s
        )
        backs = _geometric_backs(count, window)
        for back in [back for back in self.splits if back not in backs]:
            del self.splits[back]
        for back, split in self.splits.items():
            # Older side: less the batches that left, plus those that crossed the split as it
            # moved forward (indices `old_count - back - dropped` up to `count - back` now).
            moved = {key: [0, 0.0, 0.0] for key, _, _ in changes}
            for key, value, sign in changes:
                if sign < 0:
                    change = moved[key]
                    change[0] -= 1
                    change[1] -= value
                    change[2] -= value * value
            begin, end = old_count - back - dropped, count - back
            for key, value in zip(ids[begin:end], logs[begin:end]):
                change = moved.setdefault(key, [0, 0.0, 0.0])
                change[0] += 1
                change[1] += value
                change[2] += value * value
            split.move(moved.items(), whole.n, whole.s)
        for back in backs:
            if back not in self.splits:
                self.splits[back] = self._split(ids[: count - back], logs[: count - back])
        self.keys, self.logs, self.ids = list(keys), list(logs), list(ids)
        return whole, sorted(self.splits.items())

    def _split(self, ids: Sequence[int], logs: Sequence[float]) -> _PooledSplit:
        """The split whose older side is these batches."""
        n: dict[int, int] = {}
        s: dict[int, float] = {}
        q: dict[int, float] = {}
        for key, value in zip(ids, logs):
            n[key] = n.get(key, 0) + 1
            s[key] = s.get(key, 0.0) + value
            q[key] = q.get(key, 0.0) + value * value
        return self._terms(_PooledSplit(n, s, q))

    def _terms(self, split: _PooledSplit) -> _PooledSplit:
        whole = self.whole
        split.move([(key, (0, 0.0, 0.0)) for key in whole.n], whole.n, whole.s)
        return split

    def _rebuild(self, logs: list[float], ids: list[int], keys: list[object], window: type[EvidenceWindow]) -> None:
        """Every sum from the batches: one pass oldest first, the older side's sums copied at
        each split."""
        self.keys, self.logs, self.ids = keys, logs, ids
        self.updates = 0
        count = len(logs)
        wanted = {count - back: back for back in _geometric_backs(count, window)}
        n: dict[int, int] = {}
        s: dict[int, float] = {}
        q: dict[int, float] = {}
        snapshots: dict[int, tuple[dict[int, int], dict[int, float], dict[int, float]]] = {}
        for index, (key, value) in enumerate(zip(ids, logs, strict=True)):
            if index in wanted:
                snapshots[wanted[index]] = (dict(n), dict(s), dict(q))
            n[key] = n.get(key, 0) + 1
            s[key] = s.get(key, 0.0) + value
            q[key] = q.get(key, 0.0) + value * value
        self.whole = _PooledSplit(n, s, q)
        self._terms(self.whole)
        self.splits = {back: self._terms(_PooledSplit(*sums)) for back, sums in snapshots.items()}


def _buckets(sizes: Sequence[float], ratio: float) -> list[int]:
    """`_bucket` of every size, in one pass."""
    log, width = math.log, math.log(ratio)
    return [int(log(size) / width) for size in sizes]


@lru_cache(maxsize=65536)
def _bucket(size: float, ratio: float) -> int:
    """Index of the geometric size bucket (`ratio` wide) that `size` falls in."""
    return int(math.log(size) / math.log(ratio))


class StepReference(NamedTuple):
    """The cost before a batch, as `step_change_point` reads it: a fit and its spread."""

    fit: CostFit | WeightedCostFit | None
    """Fit of the `CHANGE_REFERENCE` timings before the batch (None: not determined); with
    item weights when the batches carry them and their weight costs time."""
    variance: float
    """Variance of one batch's log seconds about the fit, Student-scaled (see `_shifted`)."""
    surprise: int
    """+1 (-1) when the batch itself was `STEP_SURPRISE_Z` spreads over (under) the fit, else 0."""


class StepEntry(NamedTuple):
    """What `step_change_point` remembers of a batch between calls."""

    key: object
    """The batch (the memo is keyed by its id; holding it keeps the id from being reused)."""
    first: object
    """The first batch of its reference (another one when a change moved the reference's start)."""
    reference: StepReference
    verdict: bool | None
    """True (a step began at it), False (none did), None (not final: its batches are not all in)."""
    judged: int = 0
    """Batches after it judged already (while `verdict` is None: none of them confirmed it)."""


class StepMemo(RunMemo[tuple[int, int], StepEntry]):
    """What `step_change_point` and `rise_under_test` remember between calls: the reference of
    a batch from a first batch, by the ids of both (an entry holds both objects: no id is
    reused while it lives), and the run of splits known to be no step."""


def step_change_point(
    timings: Sequence[Timing],
    window: type[EvidenceWindow],
    *,
    weights: Sequence[float | None] | None = None,
    keys: Sequence[object] | None = None,
    memo: StepMemo | None = None,
    since: int = 0,
) -> int:
    """Index of the newest batch that began a step of the cost at moved sizes (0 when none).

    The same-size tests cannot see a cost that changed while the sizes moved: the manager
    shrinks at once after a batch far over the time limit (and grows after fast ones), and
    the batches after run at sizes the old cost never used. So a batch that was a surprise,
    `STEP_SURPRISE_Z` noise spreads off the cost fit of the `CHANGE_REFERENCE` batches
    before it, is a candidate split, and the batches after it, at whatever size, are
    compared with that fit's predictions, on log seconds (`_confirmed`). The candidate is
    chosen by its own time, so it is left out: the batches after it are independent of that
    choice, and an outlier is followed by ordinary batches. Splits are tried up to
    `CHANGE_SCAN` batches back; the newest confirmed one wins (or an older one confirmed
    within `CHANGE_AFTER` batches before it: the same step), and a verdict is final once its
    batches are in.

    A reference begins no earlier than `since`, a change the other tests found already: a
    fit across it would mix two costs, and their spread would hide the next step (a cost
    that alternates changes again within a few dozen batches).

    With `keys` (one object per timing, its batch) and a `memo` the caller keeps between
    calls, the reference of each batch from each first batch (a function of the batches
    from that one to it) is computed once, and a final verdict is remembered: the other
    tests' cut comes and goes, and with it where a reference begins.
    """
    count = len(timings)
    last = max(count - window.CHANGE_SCAN, 1)
    # The newest split whose verdict is final: its `CHANGE_AFTER` batches are in.
    settled = count - 1 - window.CHANGE_AFTER
    clean = memo.clean if isinstance(memo, StepMemo) and keys is not None else None
    if clean is not None and keys is not None and not (0 < settled <= len(keys) and keys[settled - 1] is clean.newest):
        clean = None  # another history, or one that moved by more than a batch
    # Splits whose reference is the `CHANGE_REFERENCE` batches just before them: a cut at
    # `since` or the history's start does not move it.
    unmoved_from = max(since, 0) + window.CHANGE_REFERENCE
    skip_below = settled if clean is not None and clean.length >= settled - last and last >= unmoved_from else last
    found = newest = 0
    run = 0  # final no-step verdicts in a row from `settled` back
    for split in range(count - 2, skip_below - 1, -1):
        key = keys[split] if keys is not None else None
        begin = max(split - window.CHANGE_REFERENCE, since if since < split else 0)
        first = keys[begin] if keys is not None else None
        entry = _recalled(memo, key, first)
        if entry is not None:
            reference, verdict, judged = entry.reference, entry.verdict, entry.judged
        else:
            judged = 0
            reference = _reference(
                timings[begin : split + 1], window, weights[begin : split + 1] if weights is not None else None
            )
            verdict = None if reference.surprise else False
        # A step confirmed from a later batch too, whose reference holds the first batches
        # of the new cost, is the same step: the oldest split of it within `CHANGE_AFTER` wins.
        near = not newest or split >= newest - window.CHANGE_AFTER
        if verdict is None and near:
            end = split + 1 + window.CHANGE_AFTER
            after = timings[split + 1 : end]
            confirmed = _confirmed(
                reference, after, window, weights[split + 1 : end] if weights is not None else None, judged=judged
            )
            # Final once confirmed (a sequential test) or once all its batches are in.
            verdict = True if confirmed else (False if len(after) == window.CHANGE_AFTER else None)
            judged = len(after)
            entry = None
        if memo is not None and key is not None and entry is None:
            memo[(id(key), id(first))] = StepEntry(key, first, reference, verdict, judged)
        if verdict and near:
            found = split
            newest = newest or split
        if split <= settled and run == settled - split:
            run += verdict is False and split >= unmoved_from
    if isinstance(memo, StepMemo) and keys is not None and settled > 0:
        if skip_below > last and run == 1 and clean is not None:
            run += clean.length  # the skipped splits: the run they were part of goes on
        memo.clean = CleanRun(keys[settled], run) if run else None
    if memo is not None and keys is not None:
        _forget(memo, keys, window)
    return found


def _recalled(memo: StepMemo | None, key: object, first: object) -> StepEntry | None:
    """The entry `memo` holds for the batch `key` with its reference begun at `first`, or None."""
    entry = memo.get((id(key), id(first))) if memo is not None and key is not None else None
    return entry if entry is not None and entry.key is key and entry.first is first else None


def _forget(memo: StepMemo, keys: Sequence[object], window: type[EvidenceWindow]) -> None:
    """Drop the entries of batches that left the scan, once the memo holds more than four
    entries a batch of it."""
    if len(memo) > 4 * window.CHANGE_SCAN:
        live = {id(key) for key in keys[-window.CHANGE_SCAN - 1 :]}
        for stale in [pair for pair in memo if pair[0] not in live]:
            del memo[stale]


class RiseUnderTest(NamedTuple):
    """A batch that ran far over the time limit and far over the cost before it, whose rise
    the batches since have not ruled out (`rise_under_test`)."""

    index: int
    """Its index in the timings."""
    shift: float
    """The rise of log seconds over the cost before it: what the batches since show (GLS,
    `common_shift`), or its own while none has come."""
    error: float
    """Standard error of `shift`."""
    confirmed: bool
    """The batches since confirm the rise (shift / error > `STEP_Z`): the cost changed at it."""


def rise_under_test(
    timings: Sequence[Timing],
    window: type[EvidenceWindow],
    *,
    threshold: float,
    weights: Sequence[float | None] | None = None,
    keys: Sequence[object] | None = None,
    memo: StepMemo | None = None,
    since: int = 0,
) -> RiseUnderTest | None:
    """The newest batch after `since` (of the last `CHANGE_SCAN`) that took longer than
    `threshold` and `SHOCK_Z` spreads longer than the fit of the `CHANGE_REFERENCE` batches
    before it predicts, at a size within theirs, unless the batches after it rule its rise
    out; None when there is none.

    Such a batch is taken for a step of the cost until the batches after it say otherwise
    (`EvidenceWindow.of` cuts the cost evidence at it): the size shrinks at once after it,
    and at the smaller size the fit before it extrapolates, so that a real step often stays
    unconfirmed for many batches (`step_change_point` judges `CHANGE_AFTER`). Going back to
    the old sizes to find out would run more batches far over the limit.

    The batches after it rule the rise out when what they show (d, se from `_shift`) is
    below half the slow batch's own rise r_0 with the step test's confidence:
    (r_0 / 2 - d) / se > `STEP_Z`. A batch beyond the sizes of the fit is no candidate: there
    a slow batch says that the cost curves up, which the cost fits' quadratic term is for.
    `weights`, `keys`, `memo` as for `step_change_point` (the same memo: a reference that
    begins where the step test's began is fitted once).
    """
    count = len(timings)
    for split in range(count - 1, max(count - 1 - window.CHANGE_SCAN, since), -1):
        size, seconds = timings[split]
        if seconds <= threshold:
            continue
        begin = max(split - window.CHANGE_REFERENCE, since)
        reference = _remembered(timings, window, split, begin, weights, keys, memo)
        fit = reference.fit
        if fit is None or reference.surprise <= 0 or size > window.NEIGHBOURHOOD * max(n for n, _ in timings[begin:split]):
            continue
        own = log_ratio(seconds, _predicted(fit, size, weights[split] if weights is not None else None))
        if own < window.SHOCK_Z * math.sqrt(reference.variance):
            continue
        after = timings[split + 1 :]
        measured = _residuals(reference, after, weights[split + 1 :] if weights is not None else None)
        if not after or measured is None:
            return RiseUnderTest(split, own, math.sqrt(reference.variance), False)
        estimate, error = _shift(*measured, reference, window)
        if (own / 2 - estimate) / error > window.STEP_Z:
            return None
        return RiseUnderTest(split, estimate, error, estimate / error > window.STEP_Z)
    return None


def _remembered(
    timings: Sequence[Timing],
    window: type[EvidenceWindow],
    split: int,
    begin: int,
    weights: Sequence[float | None] | None,
    keys: Sequence[object] | None,
    memo: StepMemo | None,
) -> StepReference:
    """The `StepReference` of the batch at `split` from the batches from `begin` on, from
    `memo` when it holds it, else fitted and kept there (with the verdict `step_change_point`
    starts a fresh reference with)."""
    key = keys[split] if keys is not None else None
    first = keys[begin] if keys is not None else None
    entry = _recalled(memo, key, first)
    if entry is not None:
        return entry.reference
    reference = _reference(timings[begin : split + 1], window, weights[begin : split + 1] if weights is not None else None)
    if memo is not None and keys is not None:
        memo[(id(key), id(first))] = StepEntry(key, first, reference, None if reference.surprise else False)
    return reference


def _confirmed(
    reference: StepReference,
    after: Sequence[Timing],
    window: type[EvidenceWindow],
    weights: Sequence[float | None] | None = None,
    *,
    judged: int = 0,
) -> bool:
    """Whether the batches `after` a candidate confirm its step (`_shift`: the step's
    estimate over the first k of them and its standard error). The first `judged` of them
    were judged by an earlier call and did not confirm it: only larger k are tried (each
    k's answer reads the first k batches alone).

    A step up is confirmed when z = estimate / error passes `STEP_Z` for some k >= 2 (a
    sequential test as the batches come in: a step once confirmed stays so). A step down is
    judged once, on all `CHANGE_AFTER` batches: a cost that fell only makes the size grow,
    which can wait, while a false one would forget the evidence that holds it back.
    """
    falling = reference.surprise < 0
    if not reference.surprise or (falling and len(after) < window.CHANGE_AFTER):
        return False
    measured = _residuals(reference, after, weights)
    if measured is None:
        return False
    residuals, gradients = measured
    for count in range(len(residuals) if falling else max(2, judged + 1), len(residuals) + 1):
        estimate, error = _shift(residuals[:count], gradients[:count], reference, window)
        if reference.surprise * estimate / error > window.STEP_Z:
            return True
    return False


def _residuals(
    reference: StepReference, after: Sequence[Timing], weights: Sequence[float | None] | None = None
) -> tuple[list[float], list[list[float]]] | None:
    """Log residuals of the batches `after` a candidate against the fit before it, and the
    gradients of log seconds(n) in the fit's coefficients at their sizes (None without a fit
    or where it predicts no time)."""
    fit = reference.fit
    if fit is None:
        return None
    residuals: list[float] = []
    gradients: list[list[float]] = []
    for count, (n, t) in enumerate(after):
        weight = weights[count] if weights is not None else None
        expected = _predicted(fit, n, weight)
        if expected <= 0:
            return None
        residuals.append(log_ratio(t, expected))
        gradients.append([x / expected for x in _design(fit, n, weight)])
    return residuals, gradients


def _shift(
    residuals: Sequence[float],
    gradients: Sequence[Sequence[float]],
    reference: StepReference,
    window: type[EvidenceWindow],
) -> tuple[float, float]:
    """(estimate, standard error) of a step of log seconds from the `residuals` of the
    batches after a candidate.

    They share one error, the fit's, which is small near the sizes it was fitted at and
    large far from them. So the step (a common shift of log seconds) is estimated by
    generalised least squares (`common_shift`): a batch at a size the fit knows counts
    fully, one where it extrapolates counts little, and an error the batches share does not
    shrink with their number. Each residual is first clipped to within `STEP_CLIP` spreads
    of their median, so that one outlier among three or more (a retry, a cold cache) moves
    the estimate little.
    """
    clip = window.STEP_CLIP * math.sqrt(reference.variance)
    centre = median(residuals)
    clipped = [min(max(r, centre - clip), centre + clip) for r in residuals]
    fit = reference.fit
    return common_shift(clipped, gradients, fit.covariance if fit is not None else (), reference.variance)


def common_shift(
    residuals: Sequence[float],
    gradients: Sequence[Sequence[float]],
    covariance: Sequence[Sequence[float]],
    variance: float,
) -> tuple[float, float]:
    """(estimate, standard error) of one shift d common to `residuals`, by generalised least
    squares.

    The model: r_i = d + e_i + g_i'b, with e_i independent of variance v = `variance` and b a
    shared error of covariance C = `covariance` (g_i the rows of `gradients`, three numbers
    each; no shared error when `covariance` is empty). With Sigma = v I + G C G':

        d = 1' Sigma^-1 r / 1' Sigma^-1 1,   se(d) = 1 / sqrt(1' Sigma^-1 1)

    and by Woodbury's identity, Sigma^-1 = (I - G (v I + C G'G)^-1 C G') / v, so that
    1' Sigma^-1 x = (sum x - (sum g)' (v I + C G'G)^-1 C G'x) / v for x = 1 and x = r:
    whatever the number of residuals, a 3x3 solve.
    """
    information, projected = float(len(residuals)), 0.0
    summed = [0.0] * 3  # sum g_i
    weighted = [0.0] * 3  # sum g_i r_i
    outer = [[0.0] * 3 for _ in range(3)]  # sum g_i g_i'
    for residual, gradient in zip(residuals, gradients, strict=True):
        projected += residual
        for i, gi in enumerate(gradient):
            summed[i] += gi
            weighted[i] += gi * residual
            row = outer[i]
            for j, gj in enumerate(gradient):
                row[j] += gi * gj
    if covariance:
        system = [
            [(variance if i == j else 0.0) + sum(covariance[i][m] * outer[m][j] for m in range(3)) for j in range(3)]
            for i in range(3)
        ]
        inverse = _inverse(system)
        if inverse is not None:
            solved = [[sum(inverse[i][m] * covariance[m][j] for m in range(3)) for j in range(3)] for i in range(3)]
            pulls = [sum(summed[m] * solved[m][j] for m in range(3)) for j in range(3)]
            information -= sum(p * g for p, g in zip(pulls, summed, strict=True))
            projected -= sum(p * w for p, w in zip(pulls, weighted, strict=True))
    information = max(information, 1e-12) / variance
    return projected / variance / information, 1.0 / math.sqrt(information)


def _predicted(fit: CostFit | WeightedCostFit, size: float, weight: float | None) -> float:
    """Seconds the fit predicts for a batch of `size` items weighing `weight` in all."""
    return fit.seconds(size, weight or 0.0) if isinstance(fit, WeightedCostFit) else fit.seconds(size)


def _design(fit: CostFit | WeightedCostFit, size: float, weight: float | None) -> tuple[float, float, float]:
    """The multipliers of the fit's coefficients in `_predicted` (its gradient in them)."""
    return fit.design(size, weight or 0.0) if isinstance(fit, WeightedCostFit) else fit.design(size)


def _reference(
    timings: Sequence[Timing], window: type[EvidenceWindow], weights: Sequence[float | None] | None = None
) -> StepReference:
    """The `StepReference` of the last of `timings`, from the ones before it (with their
    items' total `weights`, aligned, when the batches carry them)."""
    *before, (size, seconds) = timings
    sizes, times = zip(*before) if before else ((), ())
    fit: CostFit | WeightedCostFit | None = None
    if weights is not None and all(w is not None and w > 0 for w in weights):
        # Heavier items take longer: a stretch of them is no step of the cost. The weight
        # term stays even where twenty batches cannot show it significant: its error is then
        # large, and a batch of unusual weight is judged with that error.
        fit = fit_weighted_costs(sizes, [w or 0.0 for w in weights[:-1]], times, weight_t=0.0)
    if fit is None:
        fit = fit_line(sizes, times, min_spread=window.FIT_SPREAD)
    if fit is None:
        return StepReference(None, 0.0, 0)
    if isinstance(fit, WeightedCostFit) and weights is not None:
        expectations = [fit.seconds(n, w or 0.0) for n, w in zip(sizes, weights[:-1], strict=True)]
    else:
        expectations = fit.seconds_each(sizes)
    residuals = [math.log(t) - math.log(e) for t, e in zip(times, expectations, strict=True) if e > 0]
    dof = len(residuals) - (3 if isinstance(fit, WeightedCostFit) else 2)
    expected = _predicted(fit, size, weights[-1] if weights is not None else None)
    if dof < window.CHANGE_MIN_DOF or expected <= 0:
        return StepReference(None, 0.0, 0)
    # The residuals' root mean square, each clipped at `STEP_CLIP` robust spreads (an outlier
    # of the reference must not inflate it): the median absolute deviation of twenty
    # residuals alone is too unsteady a yardstick.
    clip = window.STEP_CLIP * max(robust_spread(residuals), window.MIN_NOISE)
    variance = sum(min(r * r, clip * clip) for r in residuals) / dof
    spread = max(math.sqrt(variance), window.MIN_NOISE)
    z = (math.log(seconds) - math.log(expected)) / spread
    surprise = (z > window.STEP_SURPRISE_Z) - (z < -window.STEP_SURPRISE_Z)
    return StepReference(fit, spread * spread * dof / (dof - 2), surprise)
