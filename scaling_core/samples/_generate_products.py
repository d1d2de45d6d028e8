"""Write the bundled sample catalogue, `products.csv`, from a fixed seed.

Run `python -m scaling_core.samples._generate_products [OUTPUT]` to regenerate it; the same
seed gives the same bytes. About one row in eight is made messy the way real catalogue
exports are: missing attributes, odd casing, stray whitespace, sizes in mixed units, typos,
odd price formats and empty descriptions. A few rows have no name at all.
"""

from __future__ import annotations

import csv
import random
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_SEED = 2024
DEFAULT_COUNT = 5000
COLUMNS = ("id", "name", "category", "material", "size", "color", "price", "description")

# Share of rows that get one to three faults, and of rows that lose their name entirely.
MESSY_SHARE = 0.12
NAMELESS_SHARE = 0.002

_BRANDS = (
    "Nordlys", "Café Verde", "Grünwald", "Harbor & Pine", "Brisé", "Fjällmark", "Oakridge",
    "Terra", "Müller & Co", "Sol y Mar", "Brightline", "Kestrel", "Maison Lumière", "Alder",
)
_ADJECTIVES = (
    "Classic", "Everyday", "Premium", "Compact", "Heritage", "Urban", "Essential",
    "Lightweight", "Deluxe", "Minimal", "Rustic", "Modern",
)
_COLORS = (
    "black", "white", "navy", "charcoal", "beige", "olive", "forest green", "sky blue",
    "burgundy", "mustard", "terracotta", "grey", "natural", "red", "sand",
)
_FEATURES = (
    "Easy to care for", "Built to last", "Designed in Oslo", "Ships flat-packed",
    "Gift-ready packaging", "Made in Portugal", "Crème finish", "Two-year warranty",
    "Certified sustainable", "Hand-finished", "Machine washable", "Water-resistant",
)

# category -> (product noun, size kind, materials)
_CATALOGUE: dict[str, tuple[tuple[str, str, tuple[str, ...]], ...]] = {
    "Apparel": (
        ("T-Shirt", "letter", ("cotton", "organic cotton", "linen", "polyester")),
        ("Hoodie", "letter", ("cotton", "fleece", "polyester")),
        ("Jeans", "waist", ("denim", "cotton")),
        ("Rain Jacket", "letter", ("polyester", "nylon")),
        ("Sweater", "letter", ("wool", "merino wool", "cashmere", "cotton")),
        ("Dress", "letter", ("linen", "silk", "cotton")),
        ("Socks", "letter", ("cotton", "merino wool", "bamboo")),
    ),
    "Furniture": (
        ("Dining Table", "dims2", ("oak", "walnut", "pine", "teak", "glass")),
        ("Armchair", "dims3", ("velvet", "leather", "rattan", "oak")),
        ("Bookshelf", "dims3", ("oak", "pine", "steel", "walnut")),
        ("Desk", "dims2", ("oak", "walnut", "steel", "bamboo")),
        ("Nightstand", "dims3", ("oak", "pine", "teak")),
        ("Bar Stool", "length_cm", ("steel", "oak", "rattan")),
    ),
    "Kitchen": (
        ("Chef's Knife", "length_cm", ("stainless steel", "carbon steel")),
        ("Frying Pan", "length_cm", ("cast iron", "stainless steel", "carbon steel", "copper")),
        ("Saucepan", "length_cm", ("stainless steel", "copper", "enamel")),
        ("Cutting Board", "dims2", ("bamboo", "oak", "walnut")),
        ("Mug", "length_cm", ("ceramic", "enamel", "glass")),
        ("Kettle", "length_cm", ("stainless steel", "glass", "enamel")),
    ),
    "Electronics Accessories": (
        ("Phone Case", "screen_in", ("silicone", "leather", "polycarbonate")),
        ("Charging Cable", "cable", ("nylon", "silicone")),
        ("Laptop Sleeve", "screen_in", ("neoprene", "leather", "felt")),
        ("Headphone Stand", "length_cm", ("aluminum", "walnut", "steel")),
        ("USB-C Hub", "length_cm", ("aluminum",)),
        ("Wireless Charger", "length_cm", ("silicone", "aluminum", "oak")),
    ),
    "Outdoor": (
        ("Tent", "dims2", ("nylon", "ripstop nylon", "polyester", "canvas")),
        ("Backpack", "letter", ("nylon", "canvas", "polyester")),
        ("Sleeping Bag", "dims2", ("polyester", "nylon")),
        ("Camping Chair", "dims3", ("aluminum", "polyester", "canvas")),
        ("Water Bottle", "length_cm", ("stainless steel", "glass")),
        ("Hammock", "dims2", ("cotton", "nylon", "canvas")),
    ),
    "Home": (
        ("Throw Blanket", "dims2", ("wool", "cotton", "cashmere")),
        ("Bath Towel", "dims2", ("cotton", "linen", "bamboo")),
        ("Cushion Cover", "dims2", ("linen", "velvet", "cotton")),
        ("Rug", "dims2", ("wool", "jute", "cotton")),
        ("Table Lamp", "length_cm", ("ceramic", "glass", "brass")),
    ),
}

_TYPOS = {
    "cotton": "coton", "polyester": "polyster", "stainless steel": "stainles steel",
    "aluminum": "alumnium", "leather": "leathr", "ceramic": "ceramc", "walnut": "walnutt",
    "merino wool": "merino wol", "cast iron": "cast irn", "linen": "linnen", "nylon": "nylom",
}
_UNPARSEABLE_SIZES = ("one size", "see description", "varies", "tbd")


def _size(kind: str, rng: random.Random) -> str:
    match kind:
        case "letter":
            return rng.choice(("XS", "S", "M", "M", "L", "L", "XL", "XXL"))
        case "waist":
            return f"{rng.randrange(28, 40, 2)} in"
        case "length_cm":
            return f"{rng.randrange(8, 80)} cm"
        case "screen_in":
            return f"{rng.choice(('6.1', '6.7', '13', '14', '15.6', '16'))} in"
        case "cable":
            return f"{rng.choice((1, 1, 2, 3))} m"
        case "dims2":
            return f"{rng.randrange(40, 240, 5)} x {rng.randrange(30, 160, 5)} cm"
        case _:
            return f"{rng.randrange(40, 120, 5)} x {rng.randrange(30, 90, 5)} x {rng.randrange(40, 200, 5)} cm"


def _messy_size(size: str, rng: random.Random) -> str:
    """The same size written the way another exporter would."""
    if rng.random() < 0.15:
        return rng.choice(_UNPARSEABLE_SIZES)
    if size in ("XS", "S", "M", "L", "XL", "XXL"):
        words = {"XS": "extra small", "S": "small", "M": "medium", "L": "large", "XL": "X-Large", "XXL": "2XL"}
        return rng.choice((words[size], size.lower(), f" {size} "))
    number, _, unit = size.rpartition(" ")
    if unit == "cm":
        choices = [number.replace(" ", "") + "cm", f"{number} CM", number.replace(" x ", " × ") + " cm"]
        if " x " not in number:
            choices.append(f"{float(number) * 10:.0f} mm")
        return rng.choice(choices)
    if unit == "in":
        return rng.choice((f"{number}in", f'{number}"', f"{number} inches", f"{float(number) * 2.54:.0f}cm"))
    return rng.choice((f"{number}m", f"{float(number) * 100:.0f} cm", f"{float(number) * 3.28:.0f} ft"))


def _odd_case(text: str, rng: random.Random) -> str:
    match rng.randrange(3):
        case 0:
            return text.upper()
        case 1:
            return text.lower()
        case _:
            return "".join(char.upper() if rng.random() < 0.5 else char.lower() for char in text)


def _messy_price(price: str, rng: random.Random) -> str:
    return rng.choice(
        (f"${price}", price.replace(".", ","), f"EUR {price}", f"{price} USD", "", "n/a", f"£{price}")
    )


def _product(index: int, rng: random.Random) -> dict[str, str]:
    category = rng.choice(list(_CATALOGUE))
    noun, size_kind, materials = rng.choice(_CATALOGUE[category])
    material = rng.choice(materials)
    color = rng.choice(_COLORS)
    brand, adjective = rng.choice(_BRANDS), rng.choice(_ADJECTIVES)
    if rng.random() < 0.4:
        name = f"{brand} {adjective} {material.title()} {noun}"
    else:
        name = f"{brand} {adjective} {noun}"
    price = f"{rng.randrange(5, 900) + rng.choice((0.0, 0.49, 0.95, 0.99)):.2f}"
    description = (
        f"{adjective} {noun.lower()} in {color} {material}. {rng.choice(_FEATURES)}."
    )
    return {
        "id": f"P{index:06d}",
        "name": name,
        "category": category,
        "material": material,
        "size": _size(size_kind, rng),
        "color": color,
        "price": price,
        "description": description,
    }


def _make_messy(row: dict[str, str], rng: random.Random) -> None:
    faults = rng.sample(
        (
            "missing_material", "missing_size", "odd_case", "whitespace", "unit", "typo",
            "empty_description", "price", "category", "missing_color",
        ),
        k=rng.choice((1, 1, 2, 2, 3)),
    )
    for fault in faults:
        match fault:
            case "missing_material":
                row["material"] = ""
            case "missing_size":
                row["size"] = ""
            case "odd_case":
                row["name"] = _odd_case(row["name"], rng)
            case "whitespace":
                row["name"] = "  " + row["name"].replace(" ", "   ", 1) + " "
                row["material"] = f" {row['material']}  " if row["material"] else ""
            case "unit":
                if row["size"]:
                    row["size"] = _messy_size(row["size"], rng)
            case "typo":
                if row["material"] in _TYPOS:
                    row["material"] = _TYPOS[row["material"]]
                else:
                    row["material"] = row["material"].upper()
            case "empty_description":
                row["description"] = ""
            case "price":
                row["price"] = _messy_price(row["price"], rng)
            case "category":
                row["category"] = rng.choice((row["category"].upper(), f" {row['category'].lower()}", ""))
            case "missing_color":
                row["color"] = ""


def generate_products(
    path: Path, count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED
) -> None:
    """Write `count` product rows to `path`; the same seed writes the same bytes."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        for index in range(1, count + 1):
            row = _product(index, rng)
            roll = rng.random()
            if roll < NAMELESS_SHARE:
                row["name"] = rng.choice(("", "   "))
            elif roll < NAMELESS_SHARE + MESSY_SHARE:
                _make_messy(row, rng)
            writer.writerow([row[column] for column in COLUMNS])


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1:
        print("usage: python -m scaling_core.samples._generate_products [OUTPUT]", file=sys.stderr)
        return 2
    output = Path(args[0]) if args else Path(__file__).with_name("products.csv")
    generate_products(output)
    print(f"wrote {DEFAULT_COUNT} products to {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
