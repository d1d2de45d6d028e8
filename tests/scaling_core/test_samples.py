from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from scaling_core import samples
from scaling_core.config import ScalingConfig
from scaling_core.processing import run_processor, summarize_batch
from scaling_core.samples import PRODUCTS_CSV
from scaling_core.samples._generate_products import generate_products, main
from scaling_core.samples.enhancer import ATTRIBUTE_WEIGHTS, enhance_product, enhance_products
from scaling_core.samples.simulated_llm import (
    SimulatedLLM,
    simulated_llm,
    simulated_llm_cliff,
    simulated_llm_fast,
)
from scaling_core.sources import Item, ItemSource, iter_items, validate_source

CLEAN = {
    "name": "Nordlys Classic Oak Dining Table",
    "category": "Furniture",
    "material": "oak",
    "size": "180 x 90 cm",
    "color": "natural",
    "price": "899.00",
    "description": "Classic dining table in natural oak. Seats six.",
}


def _products() -> list[Item]:
    return list(iter_items(ItemSource(path=PRODUCTS_CSV)))


def _is_messy(payload: dict[str, str]) -> bool:
    """A row that differs from what the generator writes for a clean product."""
    return (
        payload["name"] != " ".join(payload["name"].split())
        or payload["name"].isupper()
        or payload["name"].islower()
        or not payload["material"]
        or payload["material"] != payload["material"].strip().lower()
        or not payload["size"]
        or not payload["color"]
        or not payload["description"]
        or payload["category"] not in {"Apparel", "Furniture", "Kitchen", "Electronics Accessories", "Outdoor", "Home"}
        or not payload["price"].replace(".", "", 1).isdigit()
    )


# --- The bundled catalogue ----------------------------------------------------------------


def test_samples_exports_only_the_catalogue_path() -> None:
    assert samples.__all__ == ["PRODUCTS_CSV"]
    assert PRODUCTS_CSV.name == "products.csv"
    assert PRODUCTS_CSV.parent == Path(samples.__file__).parent


def test_catalogue_is_a_valid_source_of_about_5000_products() -> None:
    summary = validate_source(ItemSource(path=PRODUCTS_CSV))

    assert 4900 <= summary.item_count <= 5100
    assert summary.columns == ["name", "category", "material", "size", "color", "price", "description"]
    assert summary.first_ids[0] == "P000001"
    assert PRODUCTS_CSV.stat().st_size < 1_000_000


def test_catalogue_has_a_realistic_share_of_messy_rows() -> None:
    products = _products()
    messy = [item for item in products if _is_messy(item.payload)]
    text = PRODUCTS_CSV.read_text(encoding="utf-8")

    assert 0.08 <= len(messy) / len(products) <= 0.18
    assert any(not item.payload["material"] for item in messy)
    assert any(not item.payload["size"] for item in messy)
    assert any(item.payload["name"].isupper() for item in messy)
    assert any(item.payload["size"].endswith(('"', "in", "cm", "mm")) and " " not in item.payload["size"] for item in messy)
    assert any(not item.payload["name"].strip() for item in products)
    assert {"é", "ü", "ä"} <= set(text)
    assert len({item.payload["category"] for item in products if not _is_messy(item.payload)}) == 6


def test_generator_is_deterministic(tmp_path: Path) -> None:
    generate_products(tmp_path / "again.csv")
    assert main([str(tmp_path / "by_main.csv")]) == 0
    generate_products(tmp_path / "other_seed.csv", seed=7)

    bundled = PRODUCTS_CSV.read_bytes()
    assert (tmp_path / "again.csv").read_bytes() == bundled
    assert (tmp_path / "by_main.csv").read_bytes() == bundled
    assert (tmp_path / "other_seed.csv").read_bytes() != bundled


def test_generator_refuses_a_nonpositive_count(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="count must be at least 1, got 0"):
        generate_products(tmp_path / "none.csv", count=0)


# --- Enhancer ------------------------------------------------------------------------------


def test_enhancer_extracts_attributes_of_a_clean_row() -> None:
    result = enhance_product("P1", CLEAN)

    assert result["success"] is True
    assert result["confidence"] == 1.0
    output = result["output"]
    assert output["attributes"] == {
        "material": "oak",
        "size": {"text": "180 × 90 cm", "cm": [180.0, 90.0]},
        "color": "natural",
        "category": "Furniture",
        "price": 899.0,
    }
    assert output["issues"] == []
    assert output["description"] == (
        "Nordlys Classic Oak Dining Table. Made of oak in natural. Size: 180 × 90 cm. "
        "Category: Furniture. Classic dining table in natural oak. Seats six. Price: 899.00."
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("32 in", {"text": "81.3 cm", "cm": [81.3]}),
        ('32"', {"text": "81.3 cm", "cm": [81.3]}),
        ("81cm", {"text": "81 cm", "cm": [81.0]}),
        ("10 x 20 cm", {"text": "10 × 20 cm", "cm": [10.0, 20.0]}),
        ("10x20x5CM", {"text": "10 × 20 × 5 cm", "cm": [10.0, 20.0, 5.0]}),
        ("2 m", {"text": "200 cm", "cm": [200.0]}),
        ("350 mm", {"text": "35 cm", "cm": [35.0]}),
        ("6 ft", {"text": "182.9 cm", "cm": [182.9]}),
        ("XL", {"text": "XL", "letter": "XL"}),
        (" l ", {"text": "L", "letter": "L"}),
        ("X-Large", {"text": "XL", "letter": "XL"}),
        ("one size", {"text": "one size"}),
    ],
)
def test_enhancer_parses_sizes_in_many_forms(raw: str, expected: dict[str, Any]) -> None:
    result = enhance_product("P1", {**CLEAN, "size": raw})
    assert result["output"]["attributes"]["size"] == expected


def test_enhancer_recovers_attributes_of_a_messy_row_with_less_confidence() -> None:
    messy = {
        **CLEAN,
        "name": "  NORDLYS   CLASSIC DINING TABLE ",
        "material": "",
        "size": "",
        "color": "",
        "category": " furniture",
        "price": "$899",
        "description": "Solid walnut top, 180 x 90 cm, in forest green.",
    }

    result = enhance_product("P2", messy)

    attributes = result["output"]["attributes"]
    assert result["output"]["name"] == "Nordlys Classic Dining Table"
    assert attributes["material"] == "walnut"
    assert attributes["size"] == {"text": "180 × 90 cm", "cm": [180.0, 90.0]}
    assert attributes["color"] == "forest green"
    assert (attributes["category"], attributes["price"]) == ("Furniture", 899.0)
    # name, material, size and color recovered (0.5), category and price normalised (0.75).
    expected = 0.5 * (0.05 + 0.25 + 0.25 + 0.15) + 0.75 * (0.10 + 0.20)
    assert result["confidence"] == pytest.approx(expected, abs=1e-3)
    assert len(result["output"]["issues"]) == 6


def test_enhancer_corrects_typos_and_keeps_acronyms() -> None:
    result = enhance_product("P3", {**CLEAN, "name": "kestrel usb-c hub", "material": "alumnium"})

    assert result["output"]["name"] == "Kestrel USB-C Hub"
    assert result["output"]["attributes"]["material"] == "aluminum"
    assert "material: corrected 'alumnium' to 'aluminum'" in result["output"]["issues"]


def test_enhancer_fails_only_rows_without_a_name() -> None:
    assert enhance_product("P4", {**CLEAN, "name": "   "}) == {
        "item_id": "P4",
        "success": False,
        "confidence": 0.0,
        "output": None,
        "error": "the product has no name",
    }
    bare = enhance_product("P5", {"name": "Thing"})
    assert bare["success"] is True
    assert bare["confidence"] == pytest.approx(ATTRIBUTE_WEIGHTS["name"])


def test_enhancer_scores_clean_rows_above_messy_ones_on_the_catalogue() -> None:
    products = _products()
    results = enhance_products(products)

    clean = [r["confidence"] for r, item in zip(results, products) if not _is_messy(item.payload)]
    messy = [r["confidence"] for r, item in zip(results, products) if _is_messy(item.payload) and r["success"]]
    assert [r["item_id"] for r in results] == [item.id for item in products]
    assert statistics.mean(clean) > 0.99
    assert statistics.mean(messy) < 0.85
    # Enough rows below the High level for quality to matter in a demo.
    assert sum(c < 0.8 for c in messy) >= 100
    assert 0 < sum(not r["success"] for r in results) < 30


def test_enhancer_meets_the_processor_contract() -> None:
    products = _products()[:200]
    results = run_processor(enhance_products, products, ScalingConfig())
    batch = summarize_batch("b1", 200, results, processing_time=0.01)
    assert batch.total_items == 200
    assert batch.high_share > 0.8


def test_attribute_weights_add_up_to_one() -> None:
    assert sum(ATTRIBUTE_WEIGHTS.values()) == pytest.approx(1.0)


# --- Simulated model -------------------------------------------------------------------------


def _items(count: int, prefix: str = "i") -> list[Item]:
    return [Item(f"{prefix}{k}", {}) for k in range(count)]


def _high_share(llm: SimulatedLLM, size: int, total: int = 6000) -> float:
    items = _items(total)
    high = 0
    for start in range(0, total, size):
        high += sum(r["success"] and r["confidence"] >= 0.8 for r in llm(items[start : start + size]))
    return high / total


def test_simulated_time_grows_with_size_and_is_scaled() -> None:
    slept: list[float] = []
    llm = SimulatedLLM(fixed_cost_s=1.0, per_item_s=0.02, quad_s=0.0001, time_jitter=0.0, time_scale=0.5, sleep=slept.append)

    for size in (10, 50, 100, 200):
        llm(_items(size))

    assert slept == pytest.approx([0.5 * (1 + 0.02 * n + 0.0001 * n * n) for n in (10, 50, 100, 200)])


def test_simulated_jitter_stays_within_bounds_and_is_reproducible() -> None:
    slept: list[float] = []
    llm = SimulatedLLM(time_jitter=0.1, time_scale=1.0, sleep=slept.append)
    for start in range(0, 2000, 50):
        llm(_items(50, prefix=f"c{start}-"))
    llm(_items(50, prefix="c0-"))

    assert all(0.9 * 2.0 <= seconds <= 1.1 * 2.0 for seconds in slept)
    assert statistics.pstdev(slept) > 0.01
    assert slept[-1] == slept[0]


def test_simulated_quality_falls_past_the_knee() -> None:
    llm = SimulatedLLM(knee=120, slope=0.002, item_failure_rate=0.0, time_scale=0.0)

    below = _high_share(llm, 60)
    at_knee = _high_share(llm, 120)
    beyond = _high_share(llm, 240)

    assert below == pytest.approx(0.95, abs=0.02)
    assert at_knee == pytest.approx(0.95, abs=0.02)
    assert beyond == pytest.approx(0.71, abs=0.03)
    assert llm.high_share(240) == pytest.approx(0.71)


def test_simulated_item_failures_follow_the_rate() -> None:
    llm = SimulatedLLM(item_failure_rate=0.2, time_scale=0.0)
    results = [r for start in range(0, 5000, 100) for r in llm(_items(100, prefix=f"b{start}-"))]
    failed = [r for r in results if not r["success"]]

    assert len(failed) / len(results) == pytest.approx(0.2, abs=0.03)
    assert all(r["error"] == "simulated item failure" and r["confidence"] == 0.0 for r in failed)


def test_simulated_answers_are_deterministic_per_call_number() -> None:
    items = _items(80)
    first, again = SimulatedLLM(time_scale=0.0), SimulatedLLM(time_scale=0.0)
    first_answers = [first(items) for _ in range(3)]
    assert [again(items) for _ in range(3)] == first_answers
    # A retried item is drawn afresh: later calls answer differently.
    assert first_answers[0] != first_answers[1]
    assert SimulatedLLM(time_scale=0.0, seed=1)(items) != first_answers[0]


def test_simulated_calls_are_safe_from_threads() -> None:
    items = _items(100)
    reference = SimulatedLLM(time_scale=0.0)
    expected = sorted(str(reference(items)) for _ in range(8))
    shared = SimulatedLLM(time_scale=0.0)
    answers: list[str] = []
    lock = threading.Lock()

    def call() -> None:
        answer = shared(items)
        with lock:
            answers.append(str(answer))

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(answers) == expected


def test_simulated_overload_raises_above_fail_above() -> None:
    assert len(simulated_llm_cliff(_items(150))) == 150
    with pytest.raises(RuntimeError, match="a call of 151 items exceeds the limit of 150"):
        simulated_llm_cliff(_items(151))


def test_default_instance_really_sleeps_a_scaled_time() -> None:
    started = time.perf_counter()
    results = simulated_llm(_items(50))
    elapsed = time.perf_counter() - started

    # Nominally 1.0 + 0.02 * 50 = 2 s, times 0.01.
    assert 0.015 <= elapsed < 0.5
    assert len(results) == 50


def test_default_instances_suit_the_demo_configuration() -> None:
    config = ScalingConfig()
    assert simulated_llm.high_share(config.initial_batch_size) >= config.high_confidence_threshold
    assert simulated_llm.high_share(config.max_batch_size) < config.high_confidence_threshold
    assert simulated_llm.expected_seconds(config.max_batch_size) <= config.processing_time_threshold
    assert simulated_llm_fast.time_scale == 0.0
    assert simulated_llm_cliff.fail_above == 150


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fixed_cost_s": -1.0}, "fixed_cost_s must be >= 0, got -1.0"),
        ({"time_scale": float("nan")}, "time_scale must be >= 0, got nan"),
        ({"base_high_share": 1.5}, r"base_high_share must lie within \[0, 1\], got 1.5"),
        ({"item_failure_rate": -0.1}, r"item_failure_rate must lie within \[0, 1\], got -0.1"),
        ({"time_jitter": 1.0}, r"time_jitter must lie within \[0, 1\), got 1.0"),
        ({"knee": 0}, "knee must be at least 1, got 0"),
        ({"fail_above": 0}, "fail_above must be at least 1 or None, got 0"),
    ],
)
def test_simulated_settings_are_checked(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimulatedLLM(**kwargs)
