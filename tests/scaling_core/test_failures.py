"""Whole-batch failures classified as size, transient or deterministic."""

from __future__ import annotations

import pytest

from scaling_core.failures import FailureClassifier, FailureKind
from scaling_core.results import BatchView


def ok(size: int) -> BatchView:
    return BatchView(asked=size, items=size, high=size, seconds=1.0, failed=False)


def failed(size: int, error: str = "RuntimeError: boom") -> BatchView:
    return BatchView(asked=size, items=size, high=0, seconds=1.0, failed=True, error=error)


def kinds(views: list[BatchView], min_size: int = 10) -> list[FailureKind]:
    return [f.kind for f in FailureClassifier(min_size).classify(views).failures]


def test_a_failure_above_every_success_is_a_size_failure() -> None:
    report = FailureClassifier(10).classify([ok(50), ok(75), failed(112), ok(75)])
    assert [f.kind for f in report.failures] == [FailureKind.SIZE]
    assert (report.start, report.streak, report.deterministic) == (0, 0, False)
    assert [f.size for f in report.size_failures()] == [112]


def test_a_later_success_at_the_size_refutes_the_failure_and_its_whole_streak() -> None:
    assert kinds([ok(100), failed(100), ok(100)]) == [FailureKind.TRANSIENT]
    # The streak shared its cause: one refuted member makes all of it transient.
    assert kinds([ok(100), failed(200), failed(100), ok(100)]) == [FailureKind.TRANSIENT] * 2
    # A success at a smaller size refutes nothing.
    assert kinds([ok(100), failed(200), ok(150)]) == [FailureKind.SIZE]


@pytest.mark.parametrize(
    ("views", "deterministic"),
    [
        ([failed(50), failed(25), failed(12), failed(10)], True),  # reached the minimum size
        ([failed(300), failed(300), failed(150), failed(75)], True),  # spans 4x
        ([failed(300), failed(300), failed(150)], False),  # 2x: could be a ceiling that fell
        ([failed(50), failed(25)], False),  # two tries are not enough
        ([failed(200, "ProcessorContractError: 3 results for 4 items")] * 3, True),  # contract broken
    ],
)
def test_a_trailing_streak_is_deterministic_when_it_tried_every_size_or_broke_the_contract(
    views: list[BatchView], deterministic: bool
) -> None:
    report = FailureClassifier(10).classify([ok(50), *views])
    assert report.deterministic is deterministic
    assert report.streak == len(views)


def test_a_size_that_succeeded_failing_twice_moves_the_ceiling_and_forgets_older_successes() -> None:
    views = [ok(300), ok(300), failed(300), failed(300), ok(150), ok(172)]
    report = FailureClassifier(10).classify(views)
    assert report.start == 2
    assert [f.kind for f in report.failures] == [FailureKind.SIZE, FailureKind.SIZE]
    # A single trailing failure is undecided yet: it moves nothing.
    assert FailureClassifier(10).classify([ok(300), ok(300), failed(300)]).start == 0


def test_an_unrefuted_streak_is_chance_where_the_window_shows_that_many_transient_failures() -> None:
    # 40 batches at 100, 4 of them failures that a later success refuted (r = 4/42): two in a
    # row among 42 batches are expected 42 * r^2 = 0.38 times, so the trailing pair is chance.
    flaky = [failed(100) if number % 10 == 5 else ok(100) for number in range(40)]
    report = FailureClassifier(10).classify([*flaky, failed(100), failed(100)])
    assert report.transient_rate == pytest.approx(4 / 42)
    assert [f.kind for f in report.trailing] == [FailureKind.TRANSIENT] * 2
    assert report.start == 0 and report.size_failures() == []
    # Four in a row are not (42 * r^4 = 0.003): the ceiling moved down.
    report = FailureClassifier(10).classify([*flaky, *[failed(100)] * 4])
    assert [f.kind for f in report.trailing] == [FailureKind.SIZE] * 4
    assert report.start == 40
    # Two of another kind of error are no flaky call of the kind on record.
    report = FailureClassifier(10).classify([*flaky, failed(100, "ValueError: bad key"), failed(100, "ValueError: bad key")])
    assert [f.kind for f in report.trailing] == [FailureKind.SIZE] * 2
    # Without transient failures on record, two in a row at a size that succeeded are a ceiling.
    report = FailureClassifier(10).classify([*[ok(100)] * 40, failed(100), failed(100)])
    assert report.transient_rate == 0.0
    assert [f.kind for f in report.trailing] == [FailureKind.SIZE] * 2


def test_a_window_without_failures_is_classified_in_one_pass() -> None:
    report = FailureClassifier(10).classify([ok(50)] * 100)
    assert report.failures == () and report.streak == 0


def test_the_minimum_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="min_batch_size must be positive, got 0"):
        FailureClassifier(0)
