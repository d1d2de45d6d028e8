"""The command line's scaling and execution options are made from the models' fields."""

from __future__ import annotations

import argparse

import pytest
from pydantic import BaseModel, ValidationError

from flows.__main__ import _parser, _pipeline_parameters
from flows.models import ExecutionOptions
from scaling_core import ScalingConfig


def _help(command: str) -> str:
    parser = _parser()
    [subcommands] = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return " ".join(subcommands.choices[command].format_help().split())


@pytest.mark.parametrize("model", [ScalingConfig, ExecutionOptions])
@pytest.mark.parametrize("command", ["run", "demo"])
def test_every_field_is_an_option_described_as_the_field_is(model: type[BaseModel], command: str) -> None:
    text = _help(command)
    for name, field in model.model_fields.items():
        assert "--" + name.replace("_", "-") in text, name
        assert field.description and " ".join(field.description.split()) in text, name


def test_options_given_build_the_models_and_the_rest_keep_their_defaults() -> None:
    args = _parser().parse_args(
        ["run", "--source", "items.csv", "--processor", "pkg.mod:fn", "--max-batch-size", "400",
         "--scaling-factor", "2", "--no-stability-required", "--parallelism", "4", "--stage-timeout-seconds", "30"]
    )
    parameters = _pipeline_parameters(args)
    assert parameters["scaling"] == ScalingConfig(max_batch_size=400, scaling_factor=2.0, stability_required=False)
    assert parameters["execution"] == ExecutionOptions(parallelism=4, stage_timeout_seconds=30.0)
    assert parameters["pipeline"] == "items"


def test_a_bad_option_value_is_refused_by_the_model_naming_the_field() -> None:
    args = _parser().parse_args(["run", "--source", "items.csv", "--processor", "pkg.mod:fn", "--max-batch-size", "0"])
    with pytest.raises(ValidationError, match="max_batch_size"):
        _pipeline_parameters(args)


@pytest.mark.parametrize("other", [["--parallelism", "2"], ["--dask-workers", "2"]])
def test_an_isolated_processor_with_parallelism_or_dask_is_refused_naming_both(other: list[str]) -> None:
    args = _parser().parse_args(
        ["run", "--source", "items.csv", "--processor", "pkg.mod:fn", "--isolate-processor", *other]
    )
    with pytest.raises(ValidationError, match=r"isolate_processor .* needs parallelism 1 and no Dask"):
        _pipeline_parameters(args)
