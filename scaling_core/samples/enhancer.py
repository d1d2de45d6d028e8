"""A rule-based product description enhancer: a real processor that needs no model.

`enhance_products` cleans each product's name, extracts its key attributes (material, size,
colour, category, price) from the fields or, failing that, from the name and description,
and writes an enhanced description with the attributes as structured output. Its confidence
is the weighted share of the attributes it could take as given or recover, so messy rows
score lower than clean ones. Only a row without a name fails.

Example:
    >>> from scaling_core.sources import Item
    >>> [result] = enhance_products([Item("P1", {"name": "oak desk", "category": "Furniture",
    ...     "material": "oak", "size": "120 x 60 cm", "color": "natural", "price": "249.00",
    ...     "description": ""})])
    >>> result["output"]["name"], result["output"]["attributes"]["size"]["cm"], result["confidence"]
    ('Oak Desk', [120.0, 60.0], 0.975)
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

__all__ = ["ATTRIBUTE_WEIGHTS", "enhance_product", "enhance_products"]

# How much each attribute counts towards the confidence; they add up to 1.
ATTRIBUTE_WEIGHTS: Mapping[str, float] = {
    "name": 0.05,
    "material": 0.25,
    "size": 0.25,
    "color": 0.15,
    "category": 0.10,
    "price": 0.20,
}

# Credit for one attribute by how it was obtained.
_GIVEN = 1.0  # the field held it in the expected form
_NORMALISED = 0.75  # the field held it in another form (case, spacing, unit, currency)
_RECOVERED = 0.5  # corrected a typo, or found it in the name or description
_UNVERIFIED = 0.25  # kept as given but not recognised
_MISSING = 0.0

_MATERIALS = (
    "stainless steel", "carbon steel", "cast iron", "organic cotton", "merino wool", "ripstop nylon",
    "cotton", "polyester", "wool", "linen", "denim", "silk", "fleece", "cashmere", "bamboo",
    "oak", "walnut", "pine", "teak", "glass", "velvet", "leather", "rattan", "steel", "ceramic",
    "enamel", "copper", "silicone", "polycarbonate", "neoprene", "felt", "aluminum", "nylon",
    "canvas", "jute", "brass",
)
_COLORS = (
    "forest green", "sky blue", "black", "white", "navy", "charcoal", "beige", "olive",
    "burgundy", "mustard", "terracotta", "grey", "gray", "natural", "red", "sand", "blue",
    "green", "brown", "pink", "yellow",
)
_CATEGORIES = ("Apparel", "Furniture", "Kitchen", "Electronics Accessories", "Outdoor", "Home")
_NOUN_CATEGORIES = {
    "t-shirt": "Apparel", "hoodie": "Apparel", "jeans": "Apparel", "jacket": "Apparel",
    "sweater": "Apparel", "dress": "Apparel", "socks": "Apparel",
    "table": "Furniture", "armchair": "Furniture", "bookshelf": "Furniture", "desk": "Furniture",
    "nightstand": "Furniture", "stool": "Furniture",
    "knife": "Kitchen", "pan": "Kitchen", "saucepan": "Kitchen", "cutting board": "Kitchen",
    "mug": "Kitchen", "kettle": "Kitchen",
    "phone case": "Electronics Accessories", "cable": "Electronics Accessories",
    "sleeve": "Electronics Accessories", "headphone": "Electronics Accessories",
    "hub": "Electronics Accessories", "charger": "Electronics Accessories",
    "tent": "Outdoor", "backpack": "Outdoor", "sleeping bag": "Outdoor", "camping": "Outdoor",
    "water bottle": "Outdoor", "hammock": "Outdoor",
    "blanket": "Home", "towel": "Home", "cushion": "Home", "rug": "Home", "lamp": "Home",
}
_ACRONYMS = {"usb-c": "USB-C", "usb": "USB", "led": "LED", "&": "&"}

_LETTER_SIZES = ("XXS", "XS", "S", "M", "L", "XL", "XXL", "XXXL")
_SIZE_WORDS = {
    "extra small": "XS", "x-small": "XS", "small": "S", "medium": "M", "large": "L",
    "extra large": "XL", "x-large": "XL", "2xl": "XXL", "3xl": "XXXL",
}
_UNIT_CM = {
    "mm": 0.1, "cm": 1.0, "m": 100.0, "in": 2.54, "inch": 2.54, "inches": 2.54, '"': 2.54,
    "ft": 30.48, "feet": 30.48,
}
_NUMBER = r"\d+(?:[.,]\d+)?"
_UNIT = r"mm|cm|m|inches|inch|in|ft|feet|\""
_SIZE = re.compile(
    rf"(?P<dims>{_NUMBER}(?:\s*(?:x|×|by)\s*{_NUMBER}){{0,2}})\s*(?P<unit>{_UNIT})(?![a-z])",
    re.IGNORECASE,
)
_CANONICAL_SIZE = re.compile(rf"{_NUMBER}(?: x {_NUMBER}){{0,2}} (?:cm|mm|m|in)")
_PRICE = re.compile(
    r"(?:(?P<before>[$€£]|usd|eur|gbp)\s*)?(?P<amount>\d+(?:[.,]\d{1,2})?)\s*(?P<after>[$€£]|usd|eur|gbp)?",
    re.IGNORECASE,
)
_CANONICAL_PRICE = re.compile(r"\d+\.\d{2}")
_MIXED_CASE = re.compile(r"[a-zà-ÿ][A-ZÀ-Þ]")


class _ItemLike(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def payload(self) -> dict[str, Any]: ...


def enhance_products(items: Iterable[_ItemLike]) -> list[dict[str, Any]]:
    """Enhance each product; one result dict per item, in order (the processor contract)."""
    return [enhance_product(item.id, item.payload) for item in items]


def enhance_product(item_id: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """Enhance one product given as a mapping of its CSV fields.

    Returns a result dict (`item_id`, `success`, `confidence`, `output`, `error`). The output
    holds the clean `name`, an enhanced `description`, the extracted `attributes`, and the
    `issues` met on the way.
    """
    raw_name = _text(payload.get("name"))
    if not raw_name.strip():
        return {
            "item_id": item_id,
            "success": False,
            "confidence": 0.0,
            "output": None,
            "error": "the product has no name",
        }
    description = " ".join(_text(payload.get("description")).split())
    name, name_credit = _clean_name(raw_name)
    context = f"{name} {description}".lower()
    issues: list[str] = []
    if name_credit < _GIVEN:
        issues.append("name: normalised casing or spacing")

    material, material_credit = _vocabulary_attribute(
        "material", _text(payload.get("material")), _MATERIALS, context, issues
    )
    color, color_credit = _vocabulary_attribute(
        "color", _text(payload.get("color")), _COLORS, context, issues
    )
    category, category_credit = _category(_text(payload.get("category")), context, issues)
    size, size_credit = _size(_text(payload.get("size")), description, issues)
    price, price_credit = _price(_text(payload.get("price")), issues)

    credits = {
        "name": name_credit,
        "material": material_credit,
        "size": size_credit,
        "color": color_credit,
        "category": category_credit,
        "price": price_credit,
    }
    confidence = round(sum(ATTRIBUTE_WEIGHTS[key] * credit for key, credit in credits.items()), 3)
    attributes = {"material": material, "size": size, "color": color, "category": category, "price": price}
    return {
        "item_id": item_id,
        "success": True,
        "confidence": confidence,
        "output": {
            "name": name,
            "description": _describe(name, attributes, description),
            "attributes": attributes,
            "issues": issues,
        },
        "error": None,
    }


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _clean_name(raw: str) -> tuple[str, float]:
    collapsed = " ".join(raw.split())
    words = collapsed.split(" ")
    odd_case = collapsed.isupper() or collapsed.islower() or any(_MIXED_CASE.search(w) for w in words)
    if not odd_case:
        return collapsed, _GIVEN if collapsed == raw else _NORMALISED
    return " ".join(_title_word(word) for word in words), _RECOVERED


def _title_word(word: str) -> str:
    lower = word.lower()
    if lower in _ACRONYMS:
        return _ACRONYMS[lower]
    # "chef's" stays "Chef's", "t-shirt" becomes "T-Shirt".
    return "-".join(part[:1].upper() + part[1:] for part in lower.split("-"))


def _find_term(text: str, vocabulary: tuple[str, ...]) -> str | None:
    # Vocabularies list multi-word terms first, so "stainless steel" wins over "steel".
    for term in vocabulary:
        if re.search(rf"(?<![a-z]){re.escape(term)}(?![a-z])", text):
            return term
    return None


def _vocabulary_attribute(
    name: str, raw: str, vocabulary: tuple[str, ...], context: str, issues: list[str]
) -> tuple[str | None, float]:
    value = " ".join(raw.split()).lower()
    if value in vocabulary:
        if value == raw:
            return value, _GIVEN
        issues.append(f"{name}: normalised {raw!r}")
        return value, _NORMALISED
    if value:
        close = difflib.get_close_matches(value, vocabulary, n=1, cutoff=0.8)
        if close:
            issues.append(f"{name}: corrected {raw!r} to {close[0]!r}")
            return close[0], _RECOVERED
        issues.append(f"{name}: unrecognised {raw!r}")
        return value, _UNVERIFIED
    found = _find_term(context, vocabulary)
    if found is not None:
        issues.append(f"{name}: missing, found {found!r} in the text")
        return found, _RECOVERED
    issues.append(f"{name}: missing")
    return None, _MISSING


def _category(raw: str, context: str, issues: list[str]) -> tuple[str | None, float]:
    value = " ".join(raw.split())
    for category in _CATEGORIES:
        if value.lower() == category.lower():
            if raw == category:
                return category, _GIVEN
            issues.append(f"category: normalised {raw!r}")
            return category, _NORMALISED
    if value:
        issues.append(f"category: unrecognised {raw!r}")
        return value, _UNVERIFIED
    for noun, category in _NOUN_CATEGORIES.items():
        if re.search(rf"(?<![a-z]){re.escape(noun)}(?![a-z])", context):
            issues.append(f"category: missing, inferred {category!r} from {noun!r}")
            return category, _RECOVERED
    issues.append("category: missing")
    return None, _MISSING


def _parse_size(text: str) -> dict[str, Any] | None:
    value = " ".join(text.split())
    letter = value.upper()
    if letter in _LETTER_SIZES:
        return {"text": letter, "letter": letter}
    if value.lower() in _SIZE_WORDS:
        letter = _SIZE_WORDS[value.lower()]
        return {"text": letter, "letter": letter}
    match = _SIZE.fullmatch(value)
    if match is None:
        return None
    factor = _UNIT_CM[match["unit"].lower()]
    numbers = re.findall(_NUMBER, match["dims"])
    centimetres = [round(float(number.replace(",", ".")) * factor, 1) for number in numbers]
    return {"text": " × ".join(f"{cm:g}" for cm in centimetres) + " cm", "cm": centimetres}


def _size(raw: str, description: str, issues: list[str]) -> tuple[dict[str, Any] | None, float]:
    if raw.strip():
        parsed = _parse_size(raw)
        if parsed is None:
            issues.append(f"size: cannot parse {raw!r}")
            return {"text": raw.strip()}, _UNVERIFIED
        if raw in _LETTER_SIZES or _CANONICAL_SIZE.fullmatch(raw):
            return parsed, _GIVEN
        issues.append(f"size: normalised {raw!r}")
        return parsed, _NORMALISED
    found = _SIZE.search(description)
    if found is not None:
        parsed = _parse_size(found.group(0))
        if parsed is not None:
            issues.append(f"size: missing, found {found.group(0)!r} in the description")
            return parsed, _RECOVERED
    issues.append("size: missing")
    return None, _MISSING


def _price(raw: str, issues: list[str]) -> tuple[float | None, float]:
    value = raw.strip()
    match = _PRICE.fullmatch(value)
    if match is None or (match["before"] and match["after"]):
        issues.append(f"price: cannot parse {raw!r}" if value else "price: missing")
        return None, _MISSING
    amount = float(match["amount"].replace(",", "."))
    if _CANONICAL_PRICE.fullmatch(value):
        return amount, _GIVEN
    issues.append(f"price: normalised {raw!r}")
    return amount, _NORMALISED


def _describe(name: str, attributes: Mapping[str, Any], description: str) -> str:
    sentences = [name + "."]
    details = []
    if attributes["material"]:
        details.append(f"made of {attributes['material']}")
    if attributes["color"]:
        details.append(f"in {attributes['color']}")
    if details:
        sentences.append(" ".join(details).capitalize() + ".")
    size = attributes["size"]
    if size and ("cm" in size or "letter" in size):
        sentences.append(f"Size: {size['text']}.")
    if attributes["category"]:
        sentences.append(f"Category: {attributes['category']}.")
    if description:
        sentences.append(description if description.endswith(".") else description + ".")
    if attributes["price"] is not None:
        sentences.append(f"Price: {attributes['price']:.2f}.")
    return " ".join(sentences)
