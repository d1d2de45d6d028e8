"""The manager's rules for moving up and probing down, as small functions.

`ScalingManager._combine` asks them once the smallest limit is known: how big a step up may be
(`growth_step`), whether a size that ran well lately can be gone back to at once (`known_ground`),
whether growth is held after a failure for size (`failed_for_size_lately`), and which smaller
size to try once so that the cost curve stays measured (`probe`). Their constants are the
manager's (`ScalingManager.PROBE_EVERY` and the rest), passed in as `rules`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from scaling_core.limits import TimeLimit
from scaling_core.quality import QualityLimit
from scaling_core.results import Limit
from scaling_core.window import EvidenceWindow

if TYPE_CHECKING:
    from scaling_core.manager import ScalingManager


def growth_step(window: EvidenceWindow, bounds: Sequence[Limit], rules: type[ScalingManager]) -> tuple[float, str]:
    """The growth factor of one step, and how to say it."""
    config = window.config
    base = window.base
    share = window.metrics.get("high_share_near_current")
    quality_near = (
        "quality_unmet" not in window.metrics
        and share is not None
        and share < config.high_confidence_threshold + QualityLimit.HEADROOM
    )
    reach = [limit.size for limit in bounds if limit.name != "max"]
    fast = config.scaling_factor**2
    if quality_near:
        return rules.NEAR_LIMIT_GROWTH, "near the quality limit, growing slowly"
    fit = window.fit
    if (
        fit is not None
        and fit.seconds_upper(base * fast, TimeLimit.TIME_Z) <= config.processing_time_threshold * rules.FAST_GROWTH_SHARE
        and all(size >= base * fast * rules.NEIGHBOURHOOD for size in reach)
    ):
        return fast, "far from every limit, with a determined cost fit"
    if all(size >= base * config.scaling_factor * rules.NEIGHBOURHOOD for size in reach):
        return config.scaling_factor, "far from every limit"
    return rules.NEAR_LIMIT_GROWTH, "near a limit, growing slowly"


def known_ground(window: EvidenceWindow, target: int, rules: type[ScalingManager]) -> int:
    """The largest size up to `target` that ran within the time limit and the quality
    target in the last `rules.KNOWN_GROUND` batches, and did not fail: no step is needed to go
    back there (after a probe, or a shrink for one slow batch). 0 when there is none."""
    config = window.config
    known = 0
    # Only batches of the current cost regime: a size that ran well before the cost
    # changed is no known ground now.
    current = len(window.timings)
    for view in window.views[-rules.KNOWN_GROUND :][::-1]:
        if not view.failed:
            current -= 1
            if current < 0:
                break
        if (
            not view.failed
            and known < view.asked <= target
            and view.seconds <= config.processing_time_threshold
            and view.items
            and view.high >= config.high_confidence_threshold * view.items
        ):
            known = view.asked
    return known


def failed_for_size_lately(window: EvidenceWindow) -> bool:
    """Whether a batch failed whole for its size within the last `min_batches_for_scaling` batches."""
    recent = len(window.views) - window.config.min_batches_for_scaling
    return any(failure.index >= recent for failure in window.failures.size_failures())


def probe(window: EvidenceWindow, binding: Limit, rules: type[ScalingManager]) -> int | None:
    """A size below the base to try once, or None (see `scaling_core.manager`, step 4)."""
    base = window.base
    if binding.name in ("time", "throughput", "max"):
        depths = rules.PROBE_DEPTHS
    else:
        sizes = [v.items for v in window.views[-EvidenceWindow.RECENT_COST :] if v.items > 0 and not v.failed]
        if len(sizes) < 2 or max(sizes) >= EvidenceWindow.FIT_SPREAD * min(sizes):
            return None
        depths = (rules.SPREAD_PROBE_DEPTH,)
    if window.remaining_items is not None and window.remaining_items < rules.PROBE_HORIZON * base:
        return None
    previous = window.last_probe(depths[0] / 2)
    if previous is not None and previous[0] < rules.PROBE_EVERY:
        return None
    depth = depths[0]
    if len(depths) > 1 and previous is not None and previous[1].asked / base >= 1 - (depths[0] + depths[1]) / 2:
        depth = depths[1]  # the last probe was the shallow one
    probe = window.config.clamp(base * (1 - depth))
    return probe if probe < base else None
