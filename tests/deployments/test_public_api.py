"""The public names of `deployments` and of the trigger helper."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import types
from uuid import uuid4

import pytest

import deployments
from flows.triggering import TriggeredRun, atrigger, trigger
from tests.deployments.support import REPOSITORY


def test_exported_names_are_exactly_the_public_ones() -> None:
    # Names are imported on first use: every exported one resolves, nothing else public is bound.
    public = {
        name
        for name, value in vars(deployments).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public <= set(deployments.__all__)
    assert sorted(deployments.__all__) == sorted(set(deployments.__all__))
    assert all(not isinstance(getattr(deployments, name), types.ModuleType) for name in deployments.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        deployments.nope  # noqa: B018


def test_deployment_names_agree_with_the_helper_default() -> None:
    from flows.triggering import DEFAULT_DEPLOYMENT

    assert DEFAULT_DEPLOYMENT == f"{deployments.FLOW_NAME}/{deployments.ON_DEMAND}"


def test_flows_trigger_is_the_helper_however_it_is_reached_first() -> None:
    # A fresh interpreter: importing the module behind `flows.trigger` must not rebind it.
    script = (
        "import inspect, flows\n"
        "first = flows.trigger\n"
        "assert inspect.isfunction(first) and first.__name__ == 'trigger', first\n"
        "import flows.triggering\n"
        "from flows import trigger\n"
        "assert trigger is first and flows.trigger is first\n"
        "assert flows.triggering.trigger is first\n"
        "assert 'trigger' in flows.__all__\n"
        "print(inspect.signature(first))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=REPOSITORY, capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("(deployment: 'str | UUID' = 'batch-pipeline/on-demand', parameters:")


def test_a_triggered_run_says_whether_it_ended_and_completed() -> None:
    def run(state_type: str) -> TriggeredRun:
        return TriggeredRun(
            flow_run_id=uuid4(), flow_run_name="n", deployment="d", state_type=state_type, state_name="s"
        )

    states = ("SCHEDULED", "RUNNING", "COMPLETED", "FAILED", "CRASHED")
    assert [(run(state).is_final, run(state).completed) for state in states] == [
        (False, False), (False, False), (True, True), (True, False), (True, False),
    ]


def test_trigger_refuses_bad_waiting_arguments_and_a_running_event_loop() -> None:
    with pytest.raises(ValueError, match="timeout must be >= 0 seconds or None, got -1"):
        trigger(parameters={}, timeout=-1)
    with pytest.raises(ValueError, match="poll_interval must be > 0 seconds, got 0"):
        trigger(parameters={}, poll_interval=0)

    async def inside_a_loop() -> None:
        trigger(parameters={})

    with pytest.raises(RuntimeError, match=r"use `await atrigger\(...\)`"):
        asyncio.run(inside_a_loop())
    assert asyncio.iscoroutinefunction(atrigger)
