"""Bundled sample data and two ready processors for trying the package out.

`PRODUCTS_CSV` is a catalogue of 5,000 products, about one in eight of them messy (missing
attributes, odd casing, stray whitespace, sizes in mixed units, typos). Processors that can
be named by import path:

- `scaling_core.samples.enhancer:enhance_products`, a rule-based description enhancer;
- `scaling_core.samples.simulated_llm:simulated_llm` (and `simulated_llm_cliff`,
  `simulated_llm_fast`), a stand-in for a model call whose time and quality depend on the
  batch size.

Example:
    >>> from scaling_core.sources import ItemSource, validate_source
    >>> validate_source(ItemSource(path=PRODUCTS_CSV)).item_count
    5000
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["PRODUCTS_CSV"]

PRODUCTS_CSV: Path = Path(__file__).with_name("products.csv")
"""The bundled product catalogue (CSV, utf-8, id column `id`)."""
