"""What every figure of the performance benchmark shares: targets, sources, the child process.

The Prefect figures run in a child process (`python -m bench.performance._child SPEC`) with a
temporary `PREFECT_HOME`, so that the ephemeral server, the embedded store and the memory
peak are the benchmark's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from scaling_core import ItemSource
from scaling_core.settings import DATABASE_URL_ENV

__all__ = [
    "CHUNK",
    "FAST_PROCESSOR",
    "REPO_ROOT",
    "SLEEP_FIVE_SECONDS",
    "SLEEP_ONE_SECOND",
    "Targets",
    "item_id",
    "ms",
    "payload",
    "run_child",
    "verdict",
    "vm_kib",
    "write_jsonl_source",
]

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
"""The checkout, put on the child process's `PYTHONPATH` so that it imports this code."""
SLEEP_ONE_SECOND = "bench._perf_processors:sleep_one_second"
"""The overhead figure's processor: a fixed 1 s a call, so a stage's own time is known."""
SLEEP_FIVE_SECONDS = "bench._perf_processors:sleep_five_seconds"
"""The long-batch figure's processor: batches of about 5 s, as a slow model call takes."""
FAST_PROCESSOR = "scaling_core.samples.simulated_llm:simulated_llm_fast"
"""The memory figure's processor: no sleep, so a million items pass in minutes."""
SERVER_START_TIMEOUT = 120
"""Seconds the child waits for its ephemeral server: 40 s were seen on a loaded 2-core machine."""
CHUNK = 5_000
"""Items per ledger transaction (`flows.pipeline.LOAD_CHUNK`) and per claimed batch."""


class Targets:
    """What each figure must reach."""

    MAX_WALL_RATIO = 1.10
    """Pipeline wall over a plain loop with 1-s processor calls (not reachable: see README)."""
    MAX_OVERHEAD_OVER_FLOOR = 1.15
    """A stage may cost at most 15 % more than Prefect's own floor for the same calls."""
    MAX_LONG_BATCH_RATIO = 1.05
    """With ~5-s batches, the orchestration must stay within 5 % of a plain loop."""
    MIN_STORE_OVER_RAW = 0.5
    """The store's ledger writes at least half as fast as raw `sqlite3`."""
    MAX_DECISION_RATIO = 2.0
    """The scaling task must not grow with the stored history (its window is bounded)."""
    MAX_PEAK_MB = 400.0
    """A million items must fit a small worker (the ledger is on disk, not in memory)."""


def verdict(met: bool) -> str:
    """MET or MISSED, as the report prints a target."""
    return "MET" if met else "MISSED"


def ms(seconds: float) -> str:
    """Seconds as milliseconds with one decimal."""
    return f"{1000 * seconds:.1f} ms"


# -- sources ------------------------------------------------------------------------------------

_CATEGORIES = ("Home", "Garden", "Kitchen", "Electronics Accessories", "Outdoor", "Office")


def payload(n: int) -> dict[str, Any]:
    """The payload of the `n`-th product-like item."""
    category = _CATEGORIES[n % len(_CATEGORIES)]
    return {
        "name": f"Item {n} {category.lower()}",
        "category": category,
        "price": round(5 + (n * 37 % 9_500) / 10, 2),
        "description": f"Product {n} in the {category} range. Machine washable.",
    }


def item_id(n: int) -> str:
    """The id of the `n`-th item."""
    return f"P{n:07d}"


def write_jsonl_source(path: Path, count: int) -> ItemSource:
    """A JSON Lines source of `count` product-like items, written in blocks."""
    with path.open("w", encoding="utf-8") as handle:
        for start in range(0, count, 10_000):
            handle.write(
                "".join(
                    json.dumps({"id": item_id(n), **payload(n)}) + "\n"
                    for n in range(start, min(count, start + 10_000))
                )
            )
    return ItemSource(path=path)


# -- the Prefect child process --------------------------------------------------------------------


def _child_env(prefect_home: Path) -> dict[str, str]:
    """The child's environment: ephemeral Prefect in `prefect_home`, the embedded store, this checkout."""
    env = dict(os.environ)
    for name in ("PREFECT_API_URL", "PREFECT_PROFILES_PATH", DATABASE_URL_ENV):
        env.pop(name, None)  # ephemeral Prefect and the embedded store, whatever the caller set
    env.update(
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])]),
    )
    # On a loaded machine the ephemeral server takes longer than Prefect's default to start.
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(SERVER_START_TIMEOUT))
    return env


def run_child(jobs: list[dict[str, Any]], workdir: Path) -> tuple[list[dict[str, Any]], float]:
    """Run Prefect jobs in a fresh process (cwd `workdir`); returns their raw data and its wall time."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec = workdir / "spec.json"
    out = workdir / "results.json"
    spec.write_text(json.dumps({"jobs": jobs, "out": str(out)}), encoding="utf-8")
    prefect_home = workdir / "prefect-home"
    prefect_home.mkdir(exist_ok=True)
    log = workdir / "child.log"
    started = time.perf_counter()
    with log.open("wb") as handle:
        completed = subprocess.run(
            [sys.executable, "-m", "bench.performance._child", str(spec)],
            cwd=workdir,
            env=_child_env(prefect_home),
            stdout=handle,
            stderr=subprocess.STDOUT,
            check=False,
        )
    seconds = time.perf_counter() - started
    if completed.returncode != 0 or not out.exists():
        tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise RuntimeError(f"the Prefect child process failed (exit {completed.returncode}):\n{tail}")
    return json.loads(out.read_text(encoding="utf-8")), seconds


def vm_kib(field_name: str, pid: int | str = "self") -> int:
    """A memory figure of /proc/<pid>/status in KiB (VmRSS, VmHWM), 0 when unreadable."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0

