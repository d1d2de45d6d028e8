"""Every policy the bench can run, by name: the package's manager, the peers, and a reference.

* ``manager``: `scaling_core.manager.ScalingManager`, imported only when a run asks for it,
  so that the bench also runs (with ``--policies``) where the manager is not importable.
* the peers of `bench.peers`.
* ``oracle``: a reference that is told the true best size of the current phase; it shows
  how close to 1.00 a time ratio can get on each workload (end effects and noise only).
"""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Sequence

from bench.peers import PEERS
from bench.simulator import Policy, Workload, find_oracle, stable_seed
from scaling_core.config import ScalingConfig
from scaling_core.results import BatchResult, ScalingAction, ScalingDecision

__all__ = [
    "DEFAULT_POLICIES",
    "MANAGER",
    "ORACLE",
    "ManagerPolicy",
    "OraclePolicy",
    "build_policy",
    "known_policies",
    "manager_available",
]

MANAGER = "manager"
ORACLE = "oracle"
DEFAULT_POLICIES: tuple[str, ...] = (MANAGER, *PEERS)
"""What `python -m bench` runs without ``--policies``; the oracle reference is opt-in."""


def manager_available() -> bool:
    """True when `scaling_core.manager` can be imported here."""
    try:
        return importlib.util.find_spec("scaling_core.manager") is not None
    except ImportError:
        return False


def known_policies() -> list[str]:
    """Every name `build_policy` accepts."""
    return [MANAGER, *PEERS, ORACLE]


class ManagerPolicy:
    """Drives `scaling_core.manager.ScalingManager` through the bench's `Policy` protocol."""

    honours_rate_limits = True
    """The package's stage waits on a 429 and calls again with the same items (`flows.stage`)."""

    def __init__(self, config: ScalingConfig) -> None:
        # Imported here, not at module level: the bench must import without the manager.
        from scaling_core.manager import ScalingManager

        self._manager = ScalingManager(config=config)
        self._remaining: int | None = None

    def get_current_batch_size(self) -> int:
        """The manager's current size."""
        return int(self._manager.get_current_batch_size())

    def get_current_batch_weight(self) -> float | None:
        """The most summed item weight the manager lets the next batch take (None: no bound)."""
        return self._manager.get_current_batch_weight()

    def observe_remaining(self, items: int) -> None:
        """Items still to deliver, as the pipeline tells the manager (peers are not told)."""
        self._remaining = items

    def evaluate_scaling(self, history: list[BatchResult]) -> ScalingDecision:
        """The manager's decision on the whole history."""
        return self._manager.evaluate_scaling(history, remaining_items=self._remaining)

    def apply_scaling_decision(self, decision: ScalingDecision) -> object:
        """Let the manager adopt its decision."""
        return self._manager.apply_scaling_decision(decision)


class OraclePolicy:
    """Runs each phase at its true best fixed size (knows the curves and the phase boundaries)."""

    def __init__(self, workload: Workload) -> None:
        self._workload = workload
        self._sizes = [optimum.size for optimum in find_oracle(workload).phases]
        self._delivered = 0
        self._seen = 0

    def get_current_batch_size(self) -> int:
        """Best size of the phase that the next batch runs in."""
        return self._sizes[self._workload.phase_index_at(self._delivered)]

    def evaluate_scaling(self, history: Sequence[BatchResult]) -> ScalingDecision:
        """Count delivered items; the size follows from the phase."""
        for result in history[self._seen :]:
            self._delivered += result.successful_items
        self._seen = len(history)
        return ScalingDecision(
            action=ScalingAction.MAINTAIN,
            new_batch_size=self.get_current_batch_size(),
            reason="oracle size of the current phase",
            confidence_threshold=self._workload.config.high_confidence_threshold,
        )

    def apply_scaling_decision(self, decision: ScalingDecision) -> None:
        """Nothing to adopt: the size follows from the delivered count."""


def build_policy(name: str, workload: Workload, seed: int) -> Policy:
    """A fresh policy `name` for one run; its rng depends only on (workload, policy, seed)."""
    rng = random.Random(stable_seed(workload.name, name, seed, "policy"))
    if name == MANAGER:
        return ManagerPolicy(workload.config)
    if name == ORACLE:
        return OraclePolicy(workload)
    try:
        factory = PEERS[name]
    except KeyError:
        raise KeyError(f"unknown policy {name!r}; known: {', '.join(known_policies())}") from None
    return factory(workload.config, rng)
