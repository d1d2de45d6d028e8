"""The benchmark's workloads: synthetic jobs with known true curves (see `bench.simulator`).

Costs are in the range of hosted model calls: 0.5-2 s of fixed cost per call and 5-40 ms per
item. Each job is sized so that a run at the oracle's sizes takes roughly 150-400 batches,
long enough for an adaptive policy to pay for its exploration and still come within 10% of
the oracle.

Where a constraint binds (n = items per batch; q(n) is the expected High share):

========================  ==============================================================
quality-knee              q(n) crosses the 0.90 target at n = 200; time would allow 416
throughput-time-limit     quality is flat; E[T(n)] reaches the 8 s limit at n = 300
failure-cliff             time limit at n = 300, batches of 320+ fail whole (8 s timeout)
superlinear-cost          quadratic cost term: interior optimum at n = 200, far from limits
heavy-noise               like superlinear-cost with sigma 0.35 and 2% x3 outliers
quality-drift-down        target crossed at n = 350, from 50% of items on at n = 200
quality-drift-up          target crossed at n = 180, from 50% of items on at n = 360
cold-start                initial = min = 4; the time limit binds at n = 160 (40x)
item-failures             8% of items fail alone; the 0.85 target binds at n = 250
knee-and-cliff            q(n) would allow 162, but batches of 140+ fail whole
time-limit-noise          time limit at n = 212 under sigma 0.30 and 3% x2.5 outliers
latency-drift             per-item cost rises 2.5x at 40%: time limit moves 500 -> 200
transient-failures        4% of calls fail whole at random; time limit at n = 300
broken-processor          every call fails for 6 batches after 20,000 items, then works
moving-cliff              time limit at n = 300; the cliff falls from 400 to 230 halfway
quality-dip               the knee falls from 250 to 100 for the middle third, then recovers
latency-alternating       per-item cost alternates 10 / 18 ms every 10,000 items
tiny-job                  400 items; the time limit binds at n = 97 (1.20x allowed)
wide-range                initial 20, min 1; the time limit binds at n = 5,000
heterogeneous-items       item costs lognormal (sigma 1); time limit at n = 225
unmet-quality             10% of items fail at every size: no size meets the 0.90 target
token-budget              lognormal tokens (median 250, sigma 1); 20,000 tokens a batch bind
token-time-limit          lognormal tokens (median 200, sigma 1.3), no token budget: the
                          6 s limit binds through the tokens of each batch (~75 items)
cost-budget               token-budget's job with $2 per 1M tokens + $0.0001 an item and
                          $15 to spend: the run stops about halfway, within the budget
tokens-per-minute         60,000 tokens a minute, 60 an item: 16.7 items/s from n = 20 on
tokens-per-minute-large   2M tokens a minute, 1,000 an item: 33.3 items/s from n = 200 on
========================  ==============================================================

token-budget, token-time-limit and cost-budget weigh their items (`ItemWeights`): a batch's time is fixed + per item + per
token, and a batch takes items only while their tokens stay within `max_batch_weight`.

On the two rate-limited jobs a call above the limit comes back 429 (see `bench.simulator`);
the oracle is the best fixed size at the best fixed pacing, and the bench also reports the
items per second of each policy against it.
"""

from __future__ import annotations

from dataclasses import replace

from bench.simulator import ItemWeights, Phase, RateLimit, Workload
from scaling_core.budget import CostBudget
from scaling_core.config import ScalingConfig

__all__ = ["WORKLOADS", "get_workload", "workload_names"]


def _config(
    *,
    initial: int,
    min_size: int,
    max_size: int,
    time_limit_s: float,
    high: float = 0.9,
    low: float = 0.7,
    max_weight: float | None = None,
) -> ScalingConfig:
    """The workload's limits (the other fields keep their defaults)."""
    return ScalingConfig(
        initial_batch_size=initial,
        min_batch_size=min_size,
        max_batch_size=max_size,
        high_confidence_threshold=high,
        low_confidence_threshold=low,
        processing_time_threshold=time_limit_s,
        max_batch_weight=max_weight,
    )


_EMBEDDING_TOKENS = ItemWeights(median=250, sigma=1.0, max_weight=8_192)
"""Texts of 250 tokens at the median, 412 on average, a few at the 8,192 a model takes."""
_EMBEDDING = Phase(fixed_s=0.8, per_item_s=0.002, per_weight_s=0.0001, noise_sigma=0.1, q0=0.97, item_failure_p=0.01)
"""An embedding call: 0.8 s, 2 ms an item, 0.1 ms a token (20,000 tokens: 2 s)."""
_TOKEN_BUDGET = Workload(
    name="token-budget",
    description="Embedding calls of heavy-tailed texts, at most 20,000 tokens a batch: the token budget binds, not the size.",
    config=_config(initial=16, min_size=4, max_size=512, time_limit_s=10.0, max_weight=20_000),
    total_items=30_000,
    weights=_EMBEDDING_TOKENS,
    phases=(_EMBEDDING,),
)


WORKLOADS: tuple[Workload, ...] = (
    Workload(
        name="quality-knee",
        description="LLM labelling whose answers degrade past 100 items per prompt; quality binds.",
        config=_config(initial=50, min_size=10, max_size=500, time_limit_s=6.0),
        total_items=50_000,
        phases=(
            Phase(
                fixed_s=1.0, per_item_s=0.012, noise_sigma=0.15,
                q0=0.97, knee=100, slope=0.0007, q_floor=0.3, item_failure_p=0.01,
            ),
        ),
    ),
    Workload(
        name="throughput-time-limit",
        description="Embedding calls with flat quality; the per-batch time limit binds.",
        config=_config(initial=32, min_size=8, max_size=1000, time_limit_s=8.0),
        total_items=75_000,
        phases=(
            Phase(fixed_s=2.0, per_item_s=0.02, noise_sigma=0.12, q0=0.97, item_failure_p=0.005),
        ),
    ),
    Workload(
        name="failure-cliff",
        description="Payload limit just above the time-limited size: 320+ items fail whole after an 8 s timeout.",
        config=_config(initial=40, min_size=10, max_size=800, time_limit_s=5.0),
        total_items=75_000,
        phases=(
            Phase(
                fixed_s=0.8, per_item_s=0.014, noise_sigma=0.15,
                q0=0.96, cliff=320, failure_cost_s=8.0, item_failure_p=0.01,
            ),
        ),
    ),
    Workload(
        name="superlinear-cost",
        description="Per-item cost grows with batch size (quad term): interior optimum at 200, time limit far off.",
        config=_config(initial=50, min_size=10, max_size=800, time_limit_s=6.0),
        total_items=50_000,
        phases=(
            Phase(fixed_s=0.8, per_item_s=0.004, quad_s=0.00002, noise_sigma=0.1, q0=0.97, item_failure_p=0.01),
        ),
    ),
    Workload(
        name="heavy-noise",
        description="Super-linear cost under heavy timing noise (sigma 0.35) and 2% of batches 3x slower.",
        config=_config(initial=40, min_size=10, max_size=600, time_limit_s=10.0),
        total_items=50_000,
        phases=(
            Phase(
                fixed_s=1.2, per_item_s=0.008, quad_s=0.00003, noise_sigma=0.35,
                outlier_prob=0.02, outlier_factor=3.0, q0=0.96, item_failure_p=0.01,
            ),
        ),
    ),
    Workload(
        name="quality-drift-down",
        description="The knee moves from 250 to 100 items halfway: the best size falls from 350 to 200.",
        config=_config(initial=60, min_size=10, max_size=600, time_limit_s=8.0),
        total_items=60_000,
        phases=(
            Phase(
                fixed_s=1.5, per_item_s=0.01, noise_sigma=0.15,
                q0=0.96, knee=250, slope=0.0006, q_floor=0.3, item_failure_p=0.01,
            ),
            Phase(
                start_item=30_000, fixed_s=1.5, per_item_s=0.01, noise_sigma=0.15,
                q0=0.96, knee=100, slope=0.0006, q_floor=0.3, item_failure_p=0.01,
            ),
        ),
    ),
    Workload(
        name="quality-drift-up",
        description="The knee moves from 80 to 260 items halfway: the best size rises from 180 to 360.",
        config=_config(initial=40, min_size=10, max_size=600, time_limit_s=6.0),
        total_items=60_000,
        phases=(
            Phase(
                fixed_s=1.0, per_item_s=0.008, noise_sigma=0.15,
                q0=0.96, knee=80, slope=0.0006, q_floor=0.3, item_failure_p=0.01,
            ),
            Phase(
                start_item=30_000, fixed_s=1.0, per_item_s=0.008, noise_sigma=0.15,
                q0=0.96, knee=260, slope=0.0006, q_floor=0.3, item_failure_p=0.01,
            ),
        ),
    ),
    Workload(
        name="cold-start",
        description="Starts at the minimum of 4 items; the time limit allows 160 (40x).",
        config=_config(initial=4, min_size=4, max_size=1000, time_limit_s=6.0),
        total_items=40_000,
        phases=(
            Phase(
                fixed_s=1.2, per_item_s=0.03, noise_sigma=0.15,
                q0=0.95, knee=400, slope=0.0005, q_floor=0.3, item_failure_p=0.01,
            ),
        ),
    ),
    Workload(
        name="item-failures",
        description="8% of items fail on their own and are retried; an 0.85 quality target binds at 250.",
        config=_config(initial=50, min_size=10, max_size=500, time_limit_s=5.0, high=0.85, low=0.6),
        total_items=57_500,
        phases=(
            Phase(
                fixed_s=1.0, per_item_s=0.015, noise_sigma=0.15,
                q0=0.9, knee=150, slope=0.0005, q_floor=0.3, item_failure_p=0.08,
            ),
        ),
    ),
    Workload(
        name="knee-and-cliff",
        description="Quality would allow 162 items, but prompts of 140+ items overflow the context and time out.",
        config=_config(initial=40, min_size=10, max_size=400, time_limit_s=8.0),
        total_items=35_000,
        phases=(
            Phase(
                fixed_s=2.0, per_item_s=0.025, noise_sigma=0.15,
                q0=0.95, knee=100, slope=0.0008, q_floor=0.3,
                cliff=140, failure_cost_s=8.0, item_failure_p=0.01,
            ),
        ),
    ),
    Workload(
        name="time-limit-noise",
        description="The time limit binds at 212 items under sigma 0.30 noise and 3% of batches 2.5x slower.",
        config=_config(initial=40, min_size=10, max_size=800, time_limit_s=6.0),
        total_items=53_000,
        phases=(
            Phase(
                fixed_s=1.5, per_item_s=0.02, noise_sigma=0.3,
                outlier_prob=0.03, outlier_factor=2.5, q0=0.97, item_failure_p=0.01,
            ),
        ),
    ),
    Workload(
        name="latency-drift",
        description="Per-item cost rises 2.5x after 40% of items (a slower model): the time limit moves 500 -> 200.",
        config=_config(initial=50, min_size=10, max_size=800, time_limit_s=6.0),
        total_items=70_000,
        phases=(
            Phase(fixed_s=1.0, per_item_s=0.01, noise_sigma=0.15, q0=0.95, item_failure_p=0.03),
            Phase(
                start_item=28_000, fixed_s=1.0, per_item_s=0.025, noise_sigma=0.15,
                q0=0.95, item_failure_p=0.03,
            ),
        ),
    ),
    Workload(
        name="transient-failures",
        description="4% of calls fail whole at random (HTTP 5xx), whatever the size; the time limit binds at 300.",
        config=_config(initial=32, min_size=8, max_size=1000, time_limit_s=8.0),
        total_items=60_000,
        phases=(
            Phase(
                fixed_s=2.0, per_item_s=0.02, noise_sigma=0.12, q0=0.97, item_failure_p=0.005,
                transient_failure_p=0.04,
            ),
        ),
    ),
    Workload(
        name="broken-processor",
        description="A bad deploy: every call raises for 6 batches after 20,000 items, then the fixed processor resumes.",
        config=_config(initial=40, min_size=10, max_size=600, time_limit_s=6.0),
        total_items=50_000,
        broken_at_item=20_000,
        broken_calls=6,
        broken_cost_s=0.2,
        phases=(
            Phase(
                fixed_s=1.0, per_item_s=0.012, noise_sigma=0.15,
                q0=0.97, knee=150, slope=0.0007, q_floor=0.3, item_failure_p=0.01,
            ),
        ),
    ),
    Workload(
        name="moving-cliff",
        description="The time limit binds at 300; a payload limit falls from 400 to 230 items halfway (8 s timeouts).",
        config=_config(initial=40, min_size=10, max_size=800, time_limit_s=5.0),
        total_items=70_000,
        phases=(
            Phase(
                fixed_s=0.8, per_item_s=0.014, noise_sigma=0.15,
                q0=0.96, cliff=400, failure_cost_s=8.0, item_failure_p=0.01,
            ),
            Phase(
                start_item=35_000, fixed_s=0.8, per_item_s=0.014, noise_sigma=0.15,
                q0=0.96, cliff=230, failure_cost_s=8.0, item_failure_p=0.01,
            ),
        ),
    ),
    Workload(
        name="quality-dip",
        description="The knee falls from 250 to 100 items for the middle third, then recovers: 350 -> 200 -> 350.",
        config=_config(initial=60, min_size=10, max_size=600, time_limit_s=8.0),
        total_items=60_000,
        phases=tuple(
            Phase(
                start_item=start, fixed_s=1.5, per_item_s=0.01, noise_sigma=0.15,
                q0=0.96, knee=knee, slope=0.0006, q_floor=0.3, item_failure_p=0.01,
            )
            for start, knee in ((0, 250), (20_000, 100), (40_000, 250))
        ),
    ),
    Workload(
        name="latency-alternating",
        description="Per-item cost alternates between 10 and 18 ms every 10,000 items: the time limit moves 500 <-> 270.",
        config=_config(initial=50, min_size=10, max_size=800, time_limit_s=6.0),
        total_items=100_000,
        phases=tuple(
            Phase(
                start_item=start, fixed_s=1.0, per_item_s=0.018 if (start // 10_000) % 2 else 0.01,
                noise_sigma=0.15, q0=0.95, item_failure_p=0.02,
            )
            for start in range(0, 100_000, 10_000)
        ),
    ),
    Workload(
        name="tiny-job",
        description="Only 400 items; the time limit binds at 97 (a few hundred items cannot repay exploration: 1.20x).",
        config=_config(initial=20, min_size=5, max_size=200, time_limit_s=6.0),
        total_items=400,
        max_time_ratio=1.20,
        phases=(Phase(fixed_s=1.0, per_item_s=0.05, noise_sigma=0.15, q0=0.96, item_failure_p=0.01),),
    ),
    Workload(
        name="wide-range",
        description="Starts at 20 of a 1..8,000 range; the time limit binds at 5,000 (fast calls, 1 ms per item).",
        config=_config(initial=20, min_size=1, max_size=8_000, time_limit_s=6.0),
        total_items=200_000,
        phases=(Phase(fixed_s=1.0, per_item_s=0.001, noise_sigma=0.12, q0=0.96, item_failure_p=0.01),),
    ),
    Workload(
        name="heterogeneous-items",
        description="Item costs vary tenfold (lognormal, sigma 1): batch noise falls with size; time limit at 225.",
        config=_config(initial=30, min_size=5, max_size=800, time_limit_s=6.0),
        total_items=50_000,
        phases=(
            Phase(
                fixed_s=1.5, per_item_s=0.02, noise_sigma=0.05, item_cost_sigma=1.0,
                q0=0.96, item_failure_p=0.01,
            ),
        ),
    ),
    Workload(
        name="unmet-quality",
        description="10% of items fail at every size, so no size meets the 0.90 target; choose by throughput (400).",
        config=_config(initial=50, min_size=10, max_size=500, time_limit_s=6.0),
        total_items=50_000,
        phases=(Phase(fixed_s=1.0, per_item_s=0.012, noise_sigma=0.15, q0=0.86, item_failure_p=0.1),),
    ),
    _TOKEN_BUDGET,
    Workload(
        name="token-time-limit",
        description="Heavy-tailed tokens (sigma 1.3) and no token budget: each batch's tokens decide whether it keeps the 6 s limit.",
        config=_config(initial=20, min_size=5, max_size=600, time_limit_s=6.0),
        total_items=30_000,
        weights=ItemWeights(median=200, sigma=1.3, max_weight=8_192),
        phases=(Phase(fixed_s=1.0, per_item_s=0.001, per_weight_s=0.0001, noise_sigma=0.1, q0=0.97, item_failure_p=0.01),),
    ),
    replace(
        _TOKEN_BUDGET,
        name="cost-budget",
        description="token-budget's job at $2 per 1M tokens and $0.0001 an item, with $15 to spend: the run stops about halfway.",
        budget=CostBudget(cost_per_item=0.0001, cost_per_weight_unit=0.000002, max_cost=15.0),
    ),
    Workload(
        name="tokens-per-minute",
        description="LLM labelling under a 60,000 tokens-per-minute limit (LangChain #15767): 429 above it.",
        config=_config(initial=20, min_size=5, max_size=400, time_limit_s=6.0),
        total_items=30_000,
        rate_limit=RateLimit(tokens_per_minute=60_000, tokens_per_item=60),
        phases=(Phase(fixed_s=1.0, per_item_s=0.01, noise_sigma=0.15, q0=0.96, item_failure_p=0.01),),
    ),
    Workload(
        name="tokens-per-minute-large",
        description="Long prompts under a 2M tokens-per-minute limit: the limit binds only from 200 items a call.",
        config=_config(initial=32, min_size=8, max_size=1000, time_limit_s=8.0),
        total_items=75_000,
        rate_limit=RateLimit(tokens_per_minute=2_000_000, tokens_per_item=1_000),
        phases=(Phase(fixed_s=2.0, per_item_s=0.02, noise_sigma=0.12, q0=0.97, item_failure_p=0.005),),
    ),
)


def workload_names() -> list[str]:
    """Names of all workloads, in the order the bench reports them."""
    return [workload.name for workload in WORKLOADS]


def get_workload(name: str) -> Workload:
    """The workload called `name`; KeyError lists the known names."""
    for workload in WORKLOADS:
        if workload.name == name:
            return workload
    raise KeyError(f"unknown workload {name!r}; known: {', '.join(workload_names())}")
