"""`python -m deployments.trigger` builds the run's parameters from its flags (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.trigger import _parameters, _parser


def test_the_weight_field_goes_into_the_source_with_its_resolved_path(tmp_path: Path) -> None:
    source = tmp_path / "docs.csv"
    args = _parser().parse_args(["--source", str(source), "--weight-field", "tokens", "--pipeline", "docs"])
    assert _parameters(args) == {
        "source": {"path": str(source.resolve()), "weight_field": "tokens"},
        "pipeline": "docs",
    }


def test_a_weight_field_without_a_source_is_refused() -> None:
    with pytest.raises(ValueError, match="--weight-field needs --source"):
        _parameters(_parser().parse_args(["--weight-field", "tokens"]))
