"""Deployment settings: read from the environment in one place, checked with clear messages."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from deployments.serve import build_deployments
from deployments.settings import DEFAULT_CRON, SCHEDULE_PREFIX, DeploymentSettings
from flows.models import DEFAULT_PROCESSOR
from scaling_core.samples import PRODUCTS_CSV
from tests.deployments.support import REPOSITORY, child_environment


VARIABLES = [f"{SCHEDULE_PREFIX}{name.upper()}" for name in DeploymentSettings.model_fields]


@pytest.fixture
def load(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, str]], DeploymentSettings]:
    """`DeploymentSettings.load()` with exactly the given schedule variables set."""

    def load(environment: dict[str, str]) -> DeploymentSettings:
        for variable in VARIABLES:
            monkeypatch.delenv(variable, raising=False)
        for variable, value in environment.items():
            monkeypatch.setenv(variable, value)
        return DeploymentSettings.load()

    return load


def test_defaults_run_the_bundled_catalogue_nightly(load: Callable[[dict[str, str]], DeploymentSettings]) -> None:
    settings = load({})
    assert settings == DeploymentSettings()
    assert (settings.cron, settings.timezone, settings.pipeline) == (DEFAULT_CRON, "UTC", "nightly") == (
        "0 2 * * *", "UTC", "nightly",
    )
    assert settings.source == PRODUCTS_CSV.resolve()
    assert settings.processor == DEFAULT_PROCESSOR


def test_every_setting_comes_from_its_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, load: Callable[[dict[str, str]], DeploymentSettings]
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load(
        {
            "BATCHPILOT_SCHEDULE_CRON": " 30 1 * * 1-5 ",
            "BATCHPILOT_SCHEDULE_TIMEZONE": "Europe/Berlin",
            "BATCHPILOT_SCHEDULE_SOURCE": "data/items.jsonl",
            "BATCHPILOT_SCHEDULE_PIPELINE": "weekdays",
            "BATCHPILOT_SCHEDULE_PROCESSOR": "scaling_core.samples.enhancer:enhance_products",
            "BATCHPILOT_SCHEDULE_DATABASE": "shared-store",
            "BATCHPILOT_SCHEDULE_UNKNOWN": "ignored",
        }
    )
    assert settings == DeploymentSettings(
        cron="30 1 * * 1-5",
        timezone="Europe/Berlin",
        source=tmp_path / "data" / "items.jsonl",
        pipeline="weekdays",
        processor="scaling_core.samples.enhancer:enhance_products",
        database="shared-store",
    )
    assert settings.source.is_absolute()
    assert settings.parameters()["database"] == {"$ref": {"block_document_slug": "batchpilot-store/shared-store"}}


def test_blank_variables_keep_the_defaults(load: Callable[[dict[str, str]], DeploymentSettings]) -> None:
    assert load({variable: "  " for variable in VARIABLES}) == DeploymentSettings()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("BATCHPILOT_SCHEDULE_CRON", "61 2 * * *", "not a cron expression"),
        ("BATCHPILOT_SCHEDULE_CRON", "nightly", "not a cron expression"),
        ("BATCHPILOT_SCHEDULE_TIMEZONE", "Mars/Olympus", "not an IANA time zone"),
        ("BATCHPILOT_SCHEDULE_PROCESSOR", "not a path", "should match pattern"),
    ],
)
def test_an_invalid_variable_is_named_with_its_value(
    variable: str, value: str, message: str, load: Callable[[dict[str, str]], DeploymentSettings]
) -> None:
    expected = rf"^invalid deployment settings: {variable}='{re.escape(value)}': .*{message}"
    with pytest.raises(ValueError, match=expected):
        load({variable: value})


def test_the_scheduled_deployment_takes_its_schedule_and_source_from_the_settings(tmp_path: Path) -> None:
    settings = DeploymentSettings(
        cron="*/10 * * * *", timezone="Europe/Berlin", source=tmp_path / "x.csv", pipeline="p"
    )
    scheduled, on_demand = build_deployments(settings)
    assert [schedule.schedule.model_dump(include={"cron", "timezone"}) for schedule in scheduled.schedules or []] == [
        {"cron": "*/10 * * * *", "timezone": "Europe/Berlin"}
    ]
    assert scheduled.parameters == {
        "source": {"path": str(tmp_path / "x.csv")},
        "processor": DEFAULT_PROCESSOR,
        "pipeline": "p",
    }
    assert not on_demand.schedules and on_demand.parameters == {}
    assert scheduled.enforce_parameter_schema and on_demand.enforce_parameter_schema


def test_serve_refuses_invalid_settings_before_it_serves(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "deployments.serve"],
        cwd=REPOSITORY,
        env=child_environment(tmp_path, BATCHPILOT_SCHEDULE_CRON="every night"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip() == (
        "error: invalid deployment settings: BATCHPILOT_SCHEDULE_CRON='every night': "
        "not a cron expression of five fields such as '0 2 * * *'"
    )


def test_importing_the_packages_changes_no_environment_variable(tmp_path: Path) -> None:
    environment = {
        name: value for name, value in child_environment(tmp_path).items() if name != "PREFECT_SERVER_ANALYTICS_ENABLED"
    }
    script = (
        "import os\n"
        "before = dict(os.environ)\n"
        "import flows, flows.pipeline, flows.__main__, deployments.serve, deployments.trigger, scaling_core.runs\n"
        "flows.batch_pipeline, flows.trigger\n"
        "changed = {k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)}\n"
        "assert not changed, changed\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
