"""Weights and the cost budget through the real command line: the stop, the resume, the report and the export."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.__main__ import BUDGET_EXIT_CODE
from tests.flows.support import REPOSITORY, cli_environment

PROCESSOR = "tests.scaling_core.weighed_processor:embed"
"""Every item succeeds; its module's item_weight is ignored, as the runs name a weight field."""
ITEMS = 120
PER_ITEM = 0.001
PER_TOKEN = 0.00001
STOP_LINE = re.compile(r"budget reached after (\d+) items, \$(\d+\.\d+); rerun with a higher --max-cost to continue")


def _tokens(n: int) -> int:
    return 50 + (n * 37) % 400 + (1500 if n % 29 == 0 else 0)


@dataclass(frozen=True)
class Cli:
    folder: Path
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"sqlite:///{self.folder / 'store.db'}"

    def __call__(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "flows", *arguments, "--database-url", self.url],
            cwd=REPOSITORY, env=self.env, capture_output=True, text=True, timeout=180, check=False,
        )

    def run(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self(
            "run", "--source", str(self.folder / "docs.csv"), "--processor", PROCESSOR, "--pipeline", "docs",
            "--weight-field", "tokens", "--max-batch-weight", "3000", "--initial-batch-size", "10",
            "--min-batch-size", "5", "--cost-per-item", str(PER_ITEM), "--cost-per-weight-unit", str(PER_TOKEN),
            *extra,
        )


@dataclass(frozen=True)
class Runs:
    cli: Cli
    stopped: subprocess.CompletedProcess[str]
    resumed: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, prefect_api_url: str) -> Runs:
    """A run stopped by a budget of $0.25 (of the $0.49 its items cost), then resumed with a budget of $100."""
    folder = tmp_path_factory.mktemp("budget")
    rows = "".join(f"d{n},text {n},{_tokens(n)}\n" for n in range(ITEMS))
    (folder / "docs.csv").write_text("id,text,tokens\n" + rows, encoding="utf-8")
    cli = Cli(folder, cli_environment(prefect_api_url, folder / "prefect-home"))
    return Runs(cli, cli.run("--max-cost", "0.25"), cli.run("--max-cost", "100"))


def test_a_run_stops_before_its_budget_with_one_line_and_exit_status_3(runs: Runs) -> None:
    assert runs.stopped.returncode == BUDGET_EXIT_CODE == 3, runs.stopped.stderr
    last = runs.stopped.stderr.strip().splitlines()[-1]
    stop = STOP_LINE.fullmatch(last)
    assert stop is not None, runs.stopped.stderr
    finished, spent = int(stop[1]), float(stop[2])
    assert 0 < finished < ITEMS
    # What it spent is what its items cost: each ran once, at 0.001 + tokens x 0.00001.
    expected = sum(PER_ITEM + _tokens(n) * PER_TOKEN for n in range(finished))
    assert spent == pytest.approx(expected, abs=5e-5) and spent <= 0.25


def test_a_rerun_with_a_higher_budget_resumes_the_run_without_redoing_items(runs: Runs) -> None:
    assert runs.resumed.returncode == 0, runs.resumed.stderr
    assert "resuming run" in runs.resumed.stdout + runs.resumed.stderr
    exported = list(csv.DictReader(io.StringIO(runs.cli("export", "--pipeline", "docs").stdout)))
    assert [row["id"] for row in exported] == [f"d{n}" for n in range(ITEMS)]
    assert all(row["success"] == "true" for row in exported)
    for n, row in enumerate(exported):
        assert float(row["weight"]) == _tokens(n)
        assert float(row["cost"]) == pytest.approx(PER_ITEM + _tokens(n) * PER_TOKEN)  # charged once: not redone
    listed = runs.cli("runs", "--json").stdout.splitlines()
    assert len(listed) == 1 and json.loads(listed[0])["status"] == "completed"


def test_the_report_shows_each_stage_weight_and_cost_within_the_weight_budget(runs: Runs) -> None:
    report = json.loads(runs.cli("report", "--pipeline", "docs", "--json").stdout)
    total = sum(PER_ITEM + _tokens(n) * PER_TOKEN for n in range(ITEMS))
    assert report["run"]["cost"] == pytest.approx(total)
    assert report["run"]["weight"] == sum(_tokens(n) for n in range(ITEMS))
    for stage in report["stages"]:
        assert stage["items"] == 1 or stage["weight"] <= 3000
        assert stage["cost"] == pytest.approx(stage["items"] * PER_ITEM + stage["weight"] * PER_TOKEN)
    table = runs.cli("report", "--pipeline", "docs").stdout
    assert "weight" in table.splitlines()[1] and "cost" in table.splitlines()[1]
    assert f"cost ${total:.4f}" in table.splitlines()[0]


def test_the_artifacts_of_both_runs_show_weight_and_cost(runs: Runs) -> None:
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["docs-stages", "docs-summary"]))
        )
    tables = [json.loads(artifact.data) for artifact in artifacts if artifact.key == "docs-stages"]
    summaries = [artifact.data for artifact in artifacts if artifact.key == "docs-summary"]
    # The stopped run wrote its artifacts too, before it raised.
    assert len(tables) == len(summaries) == 2
    for rows in tables:
        assert all(list(row) == ["stage", "size", "items", "weight", "High share", "seconds", "cost", "action"]
                   for row in rows)
        assert all(row["cost"].startswith("$") for row in rows)
    for summary in summaries:
        assert "| weight | cost |" in summary and re.search(r"s, for \$\d+\.\d{4}\.", summary)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--max-cost", "0", "--max-cost 0: input should be greater than 0"),
        ("--cost-per-item", "-1", "--cost-per-item -1: input should be greater than or equal to 0"),
        ("--max-batch-weight", "-5", "--max-batch-weight -5: input should be greater than 0"),
    ],
)
def test_bad_cost_or_weight_options_are_refused_before_any_work(
    tmp_path: Path, prefect_api_url: str, option: str, value: str, message: str
) -> None:
    (tmp_path / "docs.csv").write_text("id,text,tokens\nd1,x,5\n", encoding="utf-8")
    cli = Cli(tmp_path, cli_environment(prefect_api_url, tmp_path / "prefect-home"))
    completed = cli.run(option, value)
    assert (completed.returncode, completed.stderr.strip()) == (2, f"error: {message}")
    assert not (tmp_path / "store.db").exists()


def test_a_bad_weight_in_the_source_is_refused_naming_its_line(tmp_path: Path, prefect_api_url: str) -> None:
    (tmp_path / "docs.csv").write_text("id,text,tokens\nd1,x,5\nd2,y,lots\n", encoding="utf-8")
    cli = Cli(tmp_path, cli_environment(prefect_api_url, tmp_path / "prefect-home"))
    completed = cli.run()
    assert completed.returncode == 2
    assert completed.stderr.strip().endswith("docs.csv: line 3: weight field 'tokens' is not a number: 'lots'")
    assert not (tmp_path / "store.db").exists()
