"""The processor contract: what a processor is, how it is named, and how its results are checked.

A processor is any callable that takes a list of items (objects with `.id: str` and
`.payload: dict`) and returns one result per item, in the same order. A result is an
`ItemResult` or a plain dict with the same keys, so a processor needs no import of this
package:

    def tag_items(items):
        return [{"item_id": item.id, "success": True, "confidence": 0.93,
                 "output": {"tag": item.payload["name"].lower()}} for item in items]

A processor may be an `async def` function (or return an awaitable): its answer is awaited,
on an event loop of its own. A processor is named by an import path, `package.module:function`,
which `load_processor` resolves. `run_processor` calls it and checks its answer; `summarize_batch` turns the
checked results into the `BatchResult` the manager learns from.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import inspect
import math
import re
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError

from scaling_core.config import ScalingConfig
from scaling_core.rates import RateWaits
from scaling_core.results import BatchResult, ConfidenceLevel, ItemResult

__all__ = [
    "IMPORT_PATH_PATTERN",
    "ITEM_WEIGHT_FUNCTION",
    "ItemLike",
    "Processor",
    "ProcessorContractError",
    "ProcessorError",
    "call_with_timeout",
    "confidence_level",
    "load_item_weight",
    "load_processor",
    "normalize_results",
    "run_processor",
    "summarize_batch",
]


class ItemLike(Protocol):
    """What a processor may rely on in each item."""

    @property
    def id(self) -> str: ...

    @property
    def payload(self) -> dict[str, Any]: ...


Processor = Callable[[list[Any]], Sequence[ItemResult | Mapping[str, Any]]]
"""A callable from a list of items to one result per item, in the same order."""


class ProcessorError(ValueError):
    """An import path that does not name a usable processor."""


class ProcessorContractError(ValueError):
    """A processor's answer that breaks the contract (count, order, ids, fields)."""


_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED = rf"{_IDENTIFIER}(?:\.{_IDENTIFIER})*"
_IMPORT_PATH = re.compile(rf"(?P<module>{_DOTTED}):(?P<attribute>{_DOTTED})")
IMPORT_PATH_PATTERN = rf"^{_DOTTED}:{_DOTTED}$"
"""The grammar of a processor's import path, `package.module:function`, as a JSON-schema pattern."""

_RESULT_KEYS = frozenset(ItemResult.model_fields)


def load_processor(path: str) -> Processor:
    """Import the processor named by `path`, written `package.module:function`.

    The attribute part may be dotted (`package.module:instance.method`). The path is only
    parsed, never evaluated.

    Raises:
        ProcessorError: naming `path`, when it is malformed, its module cannot be imported,
            the attribute is missing, or the object is a class or not callable.

    Example:
        >>> load_processor("scaling_core.samples.enhancer:enhance_products")
        <function enhance_products at 0x...>
        >>> load_processor("os.path:nope")
        Traceback (most recent call last):
        ...
        scaling_core.processing.ProcessorError: processor 'os.path:nope': module 'os.path' has no attribute 'nope'
    """
    if not isinstance(path, str):
        raise ProcessorError(f"a processor path must be a string, got {type(path).__name__}: {path!r}")
    match = _IMPORT_PATH.fullmatch(path)
    if match is None:
        raise ProcessorError(
            f"processor {path!r} is not an import path of the form 'package.module:function'"
        )
    module_name, attribute = match["module"], match["attribute"]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and module_name.startswith(error.name) and (
            module_name == error.name or module_name[len(error.name)] == "."
        ):
            raise ProcessorError(f"processor {path!r}: module {module_name!r} not found") from error
        raise ProcessorError(
            f"processor {path!r}: importing module {module_name!r} failed: {error}"
        ) from error
    except Exception as error:
        raise ProcessorError(
            f"processor {path!r}: importing module {module_name!r} raised "
            f"{type(error).__name__}: {error}"
        ) from error
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ProcessorError(
                f"processor {path!r}: module {module_name!r} has no attribute {attribute!r}"
            ) from None
    if inspect.isclass(target):
        raise ProcessorError(
            f"processor {path!r} is a class; name a function or an instance of it instead"
        )
    if not callable(target):
        raise ProcessorError(f"processor {path!r} is not callable (it is a {type(target).__name__})")
    if inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target):
        raise ProcessorError(
            f"processor {path!r} is a generator function (it yields); it must return a list with one "
            "result per item (an async processor: `async def` that returns the list)"
        )
    return target  # type: ignore[no-any-return]


ITEM_WEIGHT_FUNCTION = "item_weight"
"""The name of the optional weight function of a processor's module: `def item_weight(item) -> float`."""


def load_item_weight(path: str) -> Callable[[Any], float] | None:
    """The processor module's `item_weight(item) -> float`, or None when the module has none.

    A module may define it next to its processor to give each item a weight (its tokens,
    characters or bytes), computed once when the source is loaded; `ScalingConfig.max_batch_weight`
    then caps the summed weight of a batch, and the cost options charge per weight unit. A
    source's own `weight_field`, when named, is used instead.

    Raises:
        ProcessorError: as `load_processor` does, or when `item_weight` is not callable.

    Example:
        >>> weigh = load_item_weight("mypackage.embed:embed")  # mypackage/embed.py defines item_weight
        >>> weigh(Item("d1", {"text": "a short text"}))
        12.0
    """
    load_processor(path)
    module = sys.modules[path.partition(":")[0]]
    weigh = getattr(module, ITEM_WEIGHT_FUNCTION, None)
    if weigh is None:
        return None
    if inspect.isclass(weigh) or not callable(weigh):
        raise ProcessorError(
            f"processor {path!r}: {ITEM_WEIGHT_FUNCTION} in module {module.__name__!r} must be a function "
            f"item_weight(item) -> float, not a {type(weigh).__name__}"
        )
    return weigh  # type: ignore[no-any-return]


def confidence_level(confidence: float, config: ScalingConfig) -> ConfidenceLevel:
    """The quality bucket of a successful item with this confidence.

    Example:
        >>> confidence_level(0.85, ScalingConfig())
        <ConfidenceLevel.HIGH: 'High'>
    """
    if confidence >= config.high_confidence_level:
        return ConfidenceLevel.HIGH
    if confidence >= config.medium_confidence_level:
        return ConfidenceLevel.MEDIUM
    return ConfidenceLevel.LOW


def normalize_results(
    items: Sequence[ItemLike], raw_results: Any, config: ScalingConfig
) -> list[ItemResult]:
    """Check a processor's answer for `items` and return it as `ItemResult`s with levels.

    Each result must be an `ItemResult` or a dict of its fields (unknown keys are refused,
    so a misspelt key cannot pass silently), for the item at the same position. A result
    without `level` gets one from its confidence and the config's confidence levels; a
    failed item is always Low.

    Raises:
        ProcessorContractError: naming the offending position and item.

    Example:
        >>> normalize_results([Item("a", {})], [{"item_id": "a", "confidence": 0.6}], ScalingConfig())
        [ItemResult(item_id='a', success=True, confidence=0.6, output=None, error=None, level=<ConfidenceLevel.MEDIUM: 'Medium'>)]
    """
    if isinstance(raw_results, str | bytes | Mapping) or not isinstance(raw_results, Sequence):
        raise ProcessorContractError(
            f"a processor must return a list of results, got {type(raw_results).__name__}"
        )
    if len(raw_results) != len(items):
        raise ProcessorContractError(
            f"the processor returned {len(raw_results)} results for {len(items)} items; "
            "it must return exactly one result per item, in order"
        )
    expected_ids: set[str] | None = None
    normalized: list[ItemResult] = []
    for position, (item, raw) in enumerate(zip(items, raw_results)):
        result = _to_item_result(raw, position, item.id)
        if result.item_id != item.id:
            if expected_ids is None:
                expected_ids = {each.id for each in items}
            if result.item_id in expected_ids:
                raise ProcessorContractError(
                    f"result at position {position} is for item {result.item_id!r} but item "
                    f"{item.id!r} is at that position; results must be in the order of the items"
                )
            raise ProcessorContractError(
                f"result at position {position} is for unknown item {result.item_id!r} "
                f"(expected {item.id!r})"
            )
        if not result.success:
            level = ConfidenceLevel.LOW
        elif result.level is not None:
            level = result.level
        else:
            level = confidence_level(result.confidence, config)
        normalized.append(result if result.level is level else result.model_copy(update={"level": level}))
    return normalized


def _to_item_result(raw: Any, position: int, item_id: str) -> ItemResult:
    where = f"result at position {position} (item {item_id!r})"
    if isinstance(raw, ItemResult):
        return raw
    if not isinstance(raw, Mapping):
        raise ProcessorContractError(
            f"{where} is a {type(raw).__name__}; each result must be an ItemResult or a dict"
        )
    unknown = sorted(str(key) for key in raw if key not in _RESULT_KEYS)
    if unknown:
        raise ProcessorContractError(
            f"{where} has unknown keys {unknown}; allowed keys are {sorted(_RESULT_KEYS)}"
        )
    if "item_id" not in raw:
        raise ProcessorContractError(f"{where} has no 'item_id'")
    confidence = raw.get("confidence", 0.0)
    if isinstance(confidence, bool) or not isinstance(confidence, int | float):
        raise ProcessorContractError(
            f"{where} has confidence {confidence!r}; it must be a number in [0, 1]"
        )
    if math.isnan(confidence) or not 0.0 <= confidence <= 1.0:
        raise ProcessorContractError(f"{where} has confidence {confidence!r}, outside [0, 1]")
    try:
        return ItemResult.model_validate(dict(raw))
    except ValidationError as error:
        details = "; ".join(
            f"{'.'.join(str(part) for part in entry['loc'])}: {entry['msg']}" for entry in error.errors()
        )
        raise ProcessorContractError(f"{where} is invalid: {details}") from error


def run_processor(
    processor: Processor, items: Sequence[ItemLike], config: ScalingConfig
) -> list[ItemResult]:
    """Call `processor` on `items` and return its checked results.

    An exception raised by the processor propagates unchanged: the caller records the batch
    as a whole failure. An empty list of items returns [] without calling the processor. An
    awaitable answer (an `async def` processor) is awaited first.

    Raises:
        ProcessorContractError: when the answer breaks the contract (see `normalize_results`).

    Example:
        >>> run_processor(load_processor("scaling_core.samples.enhancer:enhance_products"), items, config)
    """
    batch = tuple(items)
    if not batch:
        return []
    # The processor gets its own list: one that edits it in place (drops a row it cannot
    # use) must not change what its answer is checked against.
    return normalize_results(batch, _awaited(processor(list(batch))), config)


def _awaited(answer: Any) -> Any:
    """`answer`, awaited to completion when it is awaitable, on a new event loop.

    The processor runs in a thread of its own (`call_with_timeout`), which has no loop; a
    caller inside a running loop gets the awaitable run on another thread, since a loop cannot
    be re-entered.
    """
    if not inspect.isawaitable(answer):
        return answer

    async def wait() -> Any:
        return await answer

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchpilot-async-processor") as pool:
        return pool.submit(asyncio.run, wait()).result()


def summarize_batch(
    batch_id: str,
    batch_size: int | None,
    results: Sequence[ItemResult],
    processing_time: float,
    *,
    keep_item_results: bool = False,
    rate: RateWaits | None = None,
) -> BatchResult:
    """Count checked results into the `BatchResult` of one batch.

    Failed items count as Low in the confidence distribution, which always holds all three
    levels. Results must carry their level (as `normalize_results` returns them). `rate`
    holds the calls refused for a rate limit and the seconds waited on them, which
    `processing_time` must not include.

    Example:
        >>> summarize_batch("b1", 50, run_processor(processor, items, config), processing_time=2.4)
        BatchResult(batch_id='b1', batch_size=50, total_items=50, successful_items=49, ...)
    """
    distribution = dict.fromkeys(ConfidenceLevel, 0)
    successful = 0
    for result in results:
        if result.success:
            successful += 1
            if result.level is None:
                raise ValueError(
                    f"result for item {result.item_id!r} has no level; pass results through "
                    "normalize_results first"
                )
            distribution[result.level] += 1
        else:
            distribution[ConfidenceLevel.LOW] += 1
    return BatchResult(
        batch_id=batch_id,
        batch_size=batch_size,
        total_items=len(results),
        successful_items=successful,
        failed_items=len(results) - successful,
        processing_time=processing_time,
        confidence_distribution=distribution,
        item_results=list(results) if keep_item_results else None,
        rate_limited_calls=rate.rate_limited_calls if rate is not None else 0,
        rate_wait=rate.waited if rate is not None else 0.0,
    )


_T = TypeVar("_T")


def call_with_timeout(call: Callable[[], _T], timeout: float) -> _T:
    """`call()` in a daemon thread, waited for at most `timeout` seconds (then TimeoutError).

    A hung processor cannot be killed from Python, but it must not hold the caller (a task
    runner that waits for its threads when a stage ends) nor the process's exit. The thread
    runs in a copy of this context: processors that read context variables (Prefect's run
    context, Dask's current worker) see what the caller sees.
    """
    try:
        return call_in_daemon_thread(call).result(timeout=timeout)
    except FutureTimeout:
        raise TimeoutError(f"the processor did not answer within {timeout:g} s") from None


def call_in_daemon_thread(call: Callable[[], _T]) -> Future[_T]:
    """Start `call()` in a daemon thread of its own and return the future of its answer.

    A daemon thread never holds the process's exit, and nothing waits for it unless asked:
    an event loop awaits it with `asyncio.wrap_future` and stays free to be interrupted.
    The thread runs in a copy of this context.
    """
    done: Future[_T] = Future()

    def target() -> None:
        try:
            done.set_result(call())
        except BaseException as error:  # handed to the waiting caller as it is
            done.set_exception(error)

    # Running from the start: a waiter that gives up (a timeout, an interrupt) cannot cancel
    # it, and the thread can always hand its answer over.
    done.set_running_or_notify_cancel()
    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(target,), name="batchpilot-processor", daemon=True).start()
    return done
