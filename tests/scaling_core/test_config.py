from __future__ import annotations

import pytest
from pydantic import ValidationError

from scaling_core import BatchResult, ConfidenceLevel, ScalingConfig


def test_defaults_match_the_documented_values() -> None:
    config = ScalingConfig()
    assert (config.initial_batch_size, config.min_batch_size, config.max_batch_size) == (50, 10, 200)
    assert config.scaling_factor == 1.5
    assert (config.high_confidence_threshold, config.low_confidence_threshold) == (0.9, 0.7)
    assert config.processing_time_threshold == 5.0
    assert config.stability_required is True
    assert config.min_batches_for_scaling == 3


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"min_batch_size": 300}, "min_batch_size"),
        ({"initial_batch_size": 5}, "initial_batch_size"),
        ({"initial_batch_size": 500}, "initial_batch_size"),
        ({"high_confidence_threshold": 1.2}, "high_confidence_threshold"),
        ({"low_confidence_threshold": -0.1}, "low_confidence_threshold"),
        ({"low_confidence_threshold": 0.95}, "low_confidence_threshold"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"min_batch_size": -3}, "min_batch_size"),
        ({"processing_time_threshold": 0}, "processing_time_threshold"),
        ({"scaling_factor": 1.0}, "scaling_factor"),
    ],
)
def test_invalid_combinations_name_the_field(fields: dict[str, float], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        ScalingConfig(**fields)


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="batchsize"):
        ScalingConfig(batchsize=10)  # type: ignore[call-arg]


def test_clamp_keeps_sizes_within_bounds() -> None:
    config = ScalingConfig(min_batch_size=10, max_batch_size=200)
    assert [config.clamp(x) for x in (0, 9.6, 10.4, 150.5, 10_000)] == [10, 10, 10, 150, 200]


def test_batch_result_counts_must_add_up() -> None:
    with pytest.raises(ValidationError, match="must equal total_items"):
        BatchResult(batch_id="b", total_items=10, successful_items=8, failed_items=1, processing_time=1)
    with pytest.raises(ValidationError, match="confidence_distribution counts 3"):
        BatchResult(
            batch_id="b",
            total_items=10,
            successful_items=10,
            processing_time=1,
            confidence_distribution={ConfidenceLevel.HIGH: 3},
        )


def test_batch_result_derived_values() -> None:
    batch = BatchResult(
        batch_id="b",
        batch_size=20,
        total_items=10,
        successful_items=9,
        failed_items=1,
        processing_time=2.0,
        confidence_distribution={"High": 6, "Medium": 3, "Low": 1},
    )
    assert batch.asked_size == 20
    assert batch.high_share == pytest.approx(0.6)
    assert batch.success_rate == pytest.approx(0.9)
    assert not batch.is_whole_failure
    everything_failed = BatchResult(
        batch_id="c", total_items=4, successful_items=0, failed_items=4, processing_time=0.0
    )
    assert everything_failed.is_whole_failure
    assert everything_failed.asked_size == 4
