from __future__ import annotations

import asyncio
import os.path
import sys
from pathlib import Path
from typing import Any

import pytest

from scaling_core.config import ScalingConfig
from scaling_core.processing import (
    ProcessorContractError,
    ProcessorError,
    confidence_level,
    load_processor,
    normalize_results,
    run_processor,
    summarize_batch,
)
from scaling_core.results import ConfidenceLevel, ItemResult
from scaling_core.sources import Item

CONFIG = ScalingConfig()  # High from 0.8, Medium from 0.5
ITEMS = [Item("a", {"n": 1}), Item("b", {"n": 2}), Item("c", {"n": 3})]


def _ok(item_id: str, confidence: float, **extra: Any) -> dict[str, Any]:
    return {"item_id": item_id, "success": True, "confidence": confidence, "output": None, "error": None, **extra}


# --- load_processor ------------------------------------------------------------------------


def test_load_processor_resolves_functions_and_dotted_attributes() -> None:
    assert load_processor("os.path:join") is os.path.join
    assert load_processor("os:path.join") is os.path.join


def test_load_processor_resolves_the_shipped_processors() -> None:
    enhancer = load_processor("scaling_core.samples.enhancer:enhance_products")
    llm = load_processor("scaling_core.samples.simulated_llm:simulated_llm_fast")

    assert run_processor(enhancer, [], CONFIG) == []
    assert [result.item_id for result in run_processor(llm, ITEMS, CONFIG)] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("not a path", "is not an import path of the form 'package.module:function'"),
        ("x;import os:y", "is not an import path"),
        ("os.path", "is not an import path"),
        ("os.path:join()", "is not an import path"),
        ("os.path:", "is not an import path"),
        (":join", "is not an import path"),
        ("os..path:join", "is not an import path"),
        ("__import__('os').system:x", "is not an import path"),
        ("os.path:nope", "module 'os.path' has no attribute 'nope'"),
        ("os:path.nope", "module 'os' has no attribute 'path.nope'"),
        ("no_such_module_xyz.sub:f", "module 'no_such_module_xyz.sub' not found"),
        ("os.no_such_sub:f", "module 'os.no_such_sub' not found"),
        ("os:sep", "is not callable (it is a str)"),
        ("collections:OrderedDict", "is a class; name a function or an instance of it instead"),
    ],
)
def test_load_processor_names_the_path_in_every_failure(path: str, message: str) -> None:
    with pytest.raises(ProcessorError) as caught:
        load_processor(path)
    assert repr(path) in str(caught.value)
    assert message in str(caught.value)


def test_load_processor_refuses_non_strings() -> None:
    with pytest.raises(ProcessorError, match="must be a string, got int: 42"):
        load_processor(42)  # type: ignore[arg-type]


def test_load_processor_reports_a_module_that_fails_to_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_proc_mod.py").write_text("import missing_dependency_xyz\n", encoding="utf-8")
    (tmp_path / "raising_proc_mod.py").write_text("raise RuntimeError('boom')\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(ProcessorError, match=r"importing module 'broken_proc_mod' failed: No module named 'missing_dependency_xyz'"):
            load_processor("broken_proc_mod:run")
        with pytest.raises(ProcessorError, match=r"importing module 'raising_proc_mod' raised RuntimeError: boom"):
            load_processor("raising_proc_mod:run")
    finally:
        sys.modules.pop("broken_proc_mod", None)
        sys.modules.pop("raising_proc_mod", None)


# --- normalize_results ---------------------------------------------------------------------


def test_levels_are_derived_from_confidence_and_thresholds() -> None:
    raw = [_ok("a", 0.8), _ok("b", 0.79), _ok("c", 0.1)]

    results = normalize_results(ITEMS, raw, CONFIG)

    assert [result.level for result in results] == [ConfidenceLevel.HIGH, ConfidenceLevel.MEDIUM, ConfidenceLevel.LOW]
    strict = ScalingConfig(high_confidence_level=0.95, medium_confidence_level=0.85)
    assert [result.level for result in normalize_results(ITEMS, raw, strict)] == [ConfidenceLevel.LOW] * 3


def test_confidence_level_boundaries() -> None:
    assert confidence_level(0.5, CONFIG) is ConfidenceLevel.MEDIUM
    assert confidence_level(0.4999, CONFIG) is ConfidenceLevel.LOW
    assert confidence_level(1.0, CONFIG) is ConfidenceLevel.HIGH


def test_given_levels_are_kept_but_failed_items_are_always_low() -> None:
    raw = [
        _ok("a", 0.2, level="High"),
        {"item_id": "b", "success": False, "confidence": 0.99, "error": "timeout", "level": "High"},
        ItemResult(item_id="c", confidence=0.9),
    ]

    results = normalize_results(ITEMS, raw, CONFIG)

    assert [result.level for result in results] == [ConfidenceLevel.HIGH, ConfidenceLevel.LOW, ConfidenceLevel.HIGH]
    assert results[1].error == "timeout"
    assert results[2] == ItemResult(item_id="c", confidence=0.9, level=ConfidenceLevel.HIGH)


def test_tuples_are_accepted_as_sequences() -> None:
    results = normalize_results(ITEMS, tuple(_ok(item.id, 0.9) for item in ITEMS), CONFIG)
    assert [result.item_id for result in results] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"a": 1}, "a processor must return a list of results, got dict"),
        ("abc", "a processor must return a list of results, got str"),
        (None, "a processor must return a list of results, got NoneType"),
        ((_ok(i, 0.9) for i in "abc"), "a processor must return a list of results, got generator"),
        ([_ok("a", 0.9)], "the processor returned 1 results for 3 items"),
        ([_ok("a", 0.9), _ok("c", 0.9), _ok("b", 0.9)], "result at position 1 is for item 'c' but item 'b' is at that position"),
        ([_ok("a", 0.9), _ok("zz", 0.9), _ok("c", 0.9)], "result at position 1 is for unknown item 'zz' (expected 'b')"),
        ([_ok("a", 0.9), _ok("b", 1.5), _ok("c", 0.9)], "result at position 1 (item 'b') has confidence 1.5, outside [0, 1]"),
        ([_ok("a", -0.1), _ok("b", 0.9), _ok("c", 0.9)], "result at position 0 (item 'a') has confidence -0.1, outside [0, 1]"),
        ([_ok("a", float("nan")), _ok("b", 0.9), _ok("c", 0.9)], "has confidence nan, outside [0, 1]"),
        ([_ok("a", 0.9), _ok("b", 0.9), _ok("c", "high")], "result at position 2 (item 'c') has confidence 'high'; it must be a number"),
        ([_ok("a", 0.9), _ok("b", 0.9), _ok("c", True)], "has confidence True; it must be a number"),
        ([_ok("a", 0.9), 0.9, _ok("c", 0.9)], "result at position 1 (item 'b') is a float; each result must be an ItemResult or a dict"),
        ([_ok("a", 0.9), _ok("b", 0.9, confidense=1), _ok("c", 0.9)], "result at position 1 (item 'b') has unknown keys ['confidense']"),
        ([_ok("a", 0.9), {"success": True, "confidence": 0.9}, _ok("c", 0.9)], "result at position 1 (item 'b') has no 'item_id'"),
        ([_ok("a", 0.9), _ok("b", 0.9, level="Great"), _ok("c", 0.9)], "result at position 1 (item 'b') is invalid: level:"),
        ([_ok("a", 0.9), _ok("b", 0.9, success="maybe"), _ok("c", 0.9)], "result at position 1 (item 'b') is invalid: success:"),
    ],
)
def test_contract_violations_are_named(raw: Any, message: str) -> None:
    with pytest.raises(ProcessorContractError) as caught:
        normalize_results(ITEMS, raw, CONFIG)
    assert message in str(caught.value)


# --- run_processor and summarize_batch ------------------------------------------------------


def _scoring_processor(items: list[Item]) -> list[dict[str, Any]]:
    return [
        _ok(item.id, item.payload["n"] / 4)
        if item.payload["n"] != 2
        else {"item_id": item.id, "success": False, "error": "no luck"}
        for item in items
    ]


def test_run_processor_passes_a_list_and_normalizes() -> None:
    received: list[Any] = []

    def processor(items: list[Item]) -> list[dict[str, Any]]:
        received.append(items)
        return _scoring_processor(items)

    results = run_processor(processor, iter(ITEMS), CONFIG)

    assert received == [ITEMS]
    assert [(r.item_id, r.success, r.level) for r in results] == [
        ("a", True, ConfidenceLevel.LOW),
        ("b", False, ConfidenceLevel.LOW),
        ("c", True, ConfidenceLevel.MEDIUM),
    ]


def test_run_processor_lets_processor_exceptions_through() -> None:
    def overloaded(items: list[Item]) -> list[dict[str, Any]]:
        raise RuntimeError("context overflow")

    with pytest.raises(RuntimeError, match="context overflow"):
        run_processor(overloaded, ITEMS, CONFIG)


async def _answer_async(items: list[Item]) -> list[dict[str, Any]]:
    await asyncio.sleep(0)
    return [_ok(item.id, 0.9) for item in items]


def test_run_processor_awaits_an_async_processor() -> None:
    results = run_processor(_answer_async, ITEMS, CONFIG)
    assert [(result.item_id, result.level) for result in results] == [(i.id, ConfidenceLevel.HIGH) for i in ITEMS]


def test_run_processor_awaits_an_async_processor_called_inside_a_running_loop() -> None:
    async def inside() -> list[ItemResult]:
        return run_processor(_answer_async, ITEMS, CONFIG)

    assert [result.item_id for result in asyncio.run(inside())] == ["a", "b", "c"]


def test_load_processor_refuses_generator_functions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "yielding.py").write_text(
        "def sync(items):\n    yield from items\n\nasync def agen(items):\n    yield items\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("sync", "agen"):
        with pytest.raises(ProcessorError, match=f"processor 'yielding:{name}' is a generator function"):
            load_processor(f"yielding:{name}")


def test_summarize_batch_counts_failures_as_low() -> None:
    items = [Item(f"i{k}", {"n": k}) for k in range(5)]
    raw = [_ok("i0", 0.95), _ok("i1", 0.85), _ok("i2", 0.6), _ok("i3", 0.2), {"item_id": "i4", "success": False}]
    results = normalize_results(items, raw, CONFIG)

    batch = summarize_batch("b-7", 8, results, processing_time=1.25)

    assert (batch.batch_id, batch.batch_size, batch.total_items) == ("b-7", 8, 5)
    assert (batch.successful_items, batch.failed_items, batch.processing_time) == (4, 1, 1.25)
    assert batch.confidence_distribution == {
        ConfidenceLevel.HIGH: 2,
        ConfidenceLevel.MEDIUM: 1,
        ConfidenceLevel.LOW: 2,
    }
    assert batch.high_share == pytest.approx(0.4)
    assert batch.item_results is None
    assert summarize_batch("b-7", 8, results, 1.25, keep_item_results=True).item_results == results


def test_summarize_batch_of_nothing_has_zero_counts() -> None:
    batch = summarize_batch("empty", None, [], processing_time=0.0)
    assert (batch.total_items, batch.successful_items, batch.high_share) == (0, 0, 0.0)
    assert sum(batch.confidence_distribution.values()) == 0


def test_summarize_batch_refuses_results_without_levels() -> None:
    with pytest.raises(ValueError, match="result for item 'a' has no level; pass results through normalize_results"):
        summarize_batch("b", 1, [ItemResult(item_id="a", confidence=0.9)], processing_time=0.1)
