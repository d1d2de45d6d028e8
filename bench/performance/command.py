"""The command: `python -m bench.performance [--quick] [--only FIGURES] [--json PATH]`."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.performance.common import REPO_ROOT, verdict
from bench.performance.decision import measure_decision
from bench.performance.export import measure_export
from bench.performance.ledger import measure_store
from bench.performance.long_batches import measure_long_batches
from bench.performance.memory import measure_memory
from bench.performance.overhead import measure_overhead

__all__ = ["FIGURES", "main"]

_DESCRIPTION = (
    "Performance benchmark of the pipeline: orchestration overhead, store throughput, decision "
    "cost, memory, ~5-s batches and the export's memory, each measured in the same run."
)

FIGURES = ("overhead", "store", "decision", "memory", "long", "export")
"""The figures in the order they run; `--only` picks among them."""


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command's flags; `figures` lists the chosen figures in their running order."""
    parser = argparse.ArgumentParser(prog="python -m bench.performance", description=_DESCRIPTION)
    parser.add_argument("--quick", action="store_true", help="100k items for the store, memory and export figures")
    parser.add_argument(
        "--only", default=",".join(FIGURES), help=f"comma-separated figures to run, of {', '.join(FIGURES)}"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(FIGURES))
    if unknown or not chosen:
        parser.error(f"--only takes names of {', '.join(FIGURES)}; got {args.only!r}")
    args.figures = [name for name in FIGURES if name in chosen]
    return args


def _code_version() -> str:
    """The commit the benchmark runs on, and whether the core or the flows have local changes."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "log", "-1", "--format=%h"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "-uno", "--", "scaling_core", "flows"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "an unknown version"
    return f"{commit}{' with local changes' if changed else ''}"


def _section(title: str, lines: list[str], seconds: float) -> None:
    """Print one figure's lines under its title and run time."""
    print(f"\n== {title} ({seconds:.0f} s)", flush=True)
    for line in lines:
        print(f"   {line}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen figures, print them with their verdicts; always returns 0."""
    args = _parse_args(argv)
    big = 100_000 if args.quick else 1_000_000
    started = time.perf_counter()
    print(
        f"batchpilot performance benchmark ({'quick' if args.quick else 'full'}): {', '.join(args.figures)}; "
        f"code at {_code_version()}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
        "ratios are measured within this run",
        flush=True,
    )
    verdicts: dict[str, bool] = {}
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="batchpilot-perf-home-") as home:
        if "prefect" not in sys.modules:
            # The decision figure imports the flows (and prefect) here; keep its home temporary.
            os.environ["PREFECT_HOME"] = home
            os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
            os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        runners: dict[str, tuple[str, Callable[[], Any]]] = {
            "overhead": ("1. orchestration overhead", lambda: measure_overhead(5_000)),
            "store": ("2. store throughput", lambda: measure_store(big)),
            "decision": ("3. decision cost", lambda: measure_decision((100, 1_000, 100_000))),
            "memory": ("4. memory", lambda: measure_memory(big)),
            "long": ("5. batches of about 5 s", lambda: measure_long_batches()),
            "export": ("6. export memory", lambda: measure_export(big)),
        }
        for name in args.figures:
            title, run = runners[name]
            t0 = time.perf_counter()
            try:
                figures = run()
            except Exception as error:  # report and go on with the other figures
                _section(title, [f"ERROR {type(error).__name__}: {error}"], time.perf_counter() - t0)
                verdicts[name] = False
                continue
            _section(title, figures.lines(), time.perf_counter() - t0)
            verdicts[name] = figures.met
            report[name] = asdict(figures)
    print("\n== targets", flush=True)
    for name, met in verdicts.items():
        print(f"   {name:<9} {verdict(met)}")
    print(f"   total time {time.perf_counter() - started:.0f} s; load average now {os.getloadavg()[0]:.1f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"verdicts": verdicts, "figures": report}, indent=2), encoding="utf-8")
    return 0


