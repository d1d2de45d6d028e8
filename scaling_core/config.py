"""The user's limits for batch sizing: one validated pydantic model."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ScalingConfig(BaseModel):
    """Limits and targets that the `ScalingManager` keeps batch sizes within.

    The best batch size is the one with the lowest time per successful item among the
    sizes whose expected High-confidence share is at least `high_confidence_threshold`,
    whose expected batch time is at most `processing_time_threshold`, and at which whole
    batches do not fail.

    Example:
        >>> ScalingConfig(initial_batch_size=20, min_batch_size=5, max_batch_size=400)
        ScalingConfig(initial_batch_size=20, min_batch_size=5, max_batch_size=400, ...)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    initial_batch_size: int = Field(
        default=50, gt=0, description="Batch size of the first stage (items)."
    )
    min_batch_size: int = Field(default=10, gt=0, description="Smallest batch size the manager may choose.")
    max_batch_size: int = Field(default=200, gt=0, description="Largest batch size the manager may choose.")
    scaling_factor: float = Field(
        default=1.5,
        gt=1.0,
        le=4.0,
        description="Largest growth factor of one step while no limit is in sight.",
    )
    high_confidence_threshold: float = Field(
        default=0.9,
        ge=0.0,
        le=1.0,
        description="Quality target: the share of items in a batch that must be High confidence.",
    )
    low_confidence_threshold: float = Field(
        default=0.7,
        ge=0.0,
        le=1.0,
        description="Below this High share the manager cuts the batch size hard at once.",
    )
    processing_time_threshold: float = Field(
        default=5.0, gt=0.0, description="Longest acceptable expected time of one batch, in seconds."
    )
    stability_required: bool = Field(
        default=True,
        description="Grow only when the recent batches agree (no failure or quality alarm in them).",
    )
    min_batches_for_scaling: int = Field(
        default=3, ge=1, description="Batches needed before the first change of size."
    )
    high_confidence_level: float = Field(
        default=0.8,
        ge=0.0,
        le=1.0,
        description="An item whose confidence is at least this counts as High.",
    )
    medium_confidence_level: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="An item whose confidence is at least this (and below the High level) counts as Medium.",
    )
    rate_limit_period_seconds: float = Field(
        default=60.0,
        gt=0.0,
        description=(
            "The period over which the provider states its rate limit, in seconds: 60 for limits per "
            "minute (tokens or requests per minute), 1 for limits per second."
        ),
    )

    max_batch_weight: float | None = Field(
        default=None,
        gt=0.0,
        description=(
            "Largest summed item weight (tokens, characters, bytes) of one batch; a batch stops short of "
            "its size rather than pass it, and an item heavier than this runs alone. Empty: no weight budget."
        ),
    )

    @model_validator(mode="after")
    def _check_combinations(self) -> Self:
        if self.min_batch_size > self.max_batch_size:
            raise ValueError(
                f"min_batch_size ({self.min_batch_size}) must not exceed max_batch_size ({self.max_batch_size})"
            )
        if not self.min_batch_size <= self.initial_batch_size <= self.max_batch_size:
            raise ValueError(
                f"initial_batch_size ({self.initial_batch_size}) must lie within "
                f"[min_batch_size, max_batch_size] = [{self.min_batch_size}, {self.max_batch_size}]"
            )
        if self.low_confidence_threshold > self.high_confidence_threshold:
            raise ValueError(
                f"low_confidence_threshold ({self.low_confidence_threshold}) must not exceed "
                f"high_confidence_threshold ({self.high_confidence_threshold})"
            )
        if self.medium_confidence_level > self.high_confidence_level:
            raise ValueError(
                f"medium_confidence_level ({self.medium_confidence_level}) must not exceed "
                f"high_confidence_level ({self.high_confidence_level})"
            )
        return self

    def clamp(self, size: float) -> int:
        """Round `size` to an int within [min_batch_size, max_batch_size]."""
        return max(self.min_batch_size, min(self.max_batch_size, int(round(size))))

    def weight_cap(self, decided: float | None = None) -> float | None:
        """The summed item weight a batch may take: `max_batch_weight`, tightened by a
        decision's `ScalingDecision.max_weight` when given (None: no cap)."""
        if decided is None or self.max_batch_weight is None:
            return self.max_batch_weight if decided is None else decided
        return min(self.max_batch_weight, decided)
