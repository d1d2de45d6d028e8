"""A processor in a child process: a crash or a hang costs one call, and the next call works."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from scaling_core import Item, ScalingConfig
from scaling_core.isolation import ProcessorCrashed, ProcessorProcess
from tests.flows.fault_processors import POISON_ITEM
from tests.flows.processors import HANG_SECONDS

CONFIG = ScalingConfig()


@pytest.fixture(scope="module")
def child() -> Iterator[ProcessorProcess]:
    process = ProcessorProcess("tests.flows.fault_processors:kills_its_process_on_poison")
    yield process
    process.close()


def _items(*ids: str) -> list[Item]:
    return [Item(id=item_id, payload={}) for item_id in ids]


def test_a_child_that_dies_costs_that_call_and_the_next_call_gets_a_new_child(child: ProcessorProcess) -> None:
    assert [result.item_id for result in child.run(_items("a", "b"), CONFIG, timeout=60)] == ["a", "b"]
    with pytest.raises(ProcessorCrashed, match=r"^the processor's process died \(killed by SIGKILL\)$"):
        child.run(_items("a", POISON_ITEM), CONFIG, timeout=60)
    [result] = child.run(_items("c"), CONFIG, timeout=60)
    assert (result.item_id, result.success, result.output) == ("c", True, {"echo": "c"})


def test_what_the_processor_raises_is_raised_in_the_parent() -> None:
    failing = ProcessorProcess("tests.flows.fault_processors:raises_on_every_call")
    try:
        with pytest.raises(RuntimeError, match="the model endpoint is unavailable"):
            failing.run(_items("a"), CONFIG, timeout=60)
    finally:
        failing.close()


def test_a_processor_past_its_timeout_is_killed_and_the_next_call_gets_a_new_child() -> None:
    hanging = ProcessorProcess("tests.flows.processors:hangs_above_5")
    try:
        hanging.run(_items("warm"), CONFIG, timeout=60)  # the child is started outside the timing
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"did not answer within 0.5 s; its process was killed"):
            hanging.run(_items(*"abcdef"), CONFIG, timeout=0.5)
        assert time.monotonic() - started < HANG_SECONDS / 2, "the call waited for the hung processor"
        assert [result.item_id for result in hanging.run(_items("g"), CONFIG, timeout=60)] == ["g"]
    finally:
        hanging.close()
