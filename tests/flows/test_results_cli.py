"""Getting results out, through the real command line: export, runs, report, and the errors of each.

The README's examples run first, as written, from the repository's root: every code block it
marks with `<!-- readme-example: bash -->` or `<!-- readme-example: python -->`, in order, in
one temporary store (`BATCHPILOT_DATABASE_URL`) and with `TMPDIR` in a temporary folder, so
nothing is left in the repository. Their runs of the tickets example (the command line's
with the `async def` processor) then serve every read-only test of the module.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.performance.export import build_results_store
from docs.examples.tickets import classify
from scaling_core import ItemSource, iter_items, iter_results, make_engine
from tests.flows.support import REPOSITORY, cli_environment

TICKETS = REPOSITORY / "docs" / "examples" / "tickets.csv"
ASYNC_PROCESSOR = "docs.examples.tickets:classify_async"

_MARKED = re.compile(r"<!-- readme-example: (bash|python) -->\n```\1\n(.*?)\n```", re.DOTALL)


def readme_examples() -> list[tuple[str, str]]:
    """(language, code) of every marked block of the README, in order."""
    return _MARKED.findall((REPOSITORY / "README.md").read_text(encoding="utf-8"))


def _repository_state() -> list[str]:
    """Changed, untracked and ignored files of the repository (bytecode caches aside)."""
    listed = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
        cwd=REPOSITORY, capture_output=True, text=True, check=True,
    ).stdout
    return [line for line in listed.splitlines() if "__pycache__" not in line and ".pyc" not in line]


@dataclass(frozen=True)
class Store:
    url: str
    env: dict[str, str]
    folder: Path
    outputs: list[subprocess.CompletedProcess[str]]
    repository_unchanged: bool

    def cli(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "flows", *arguments, "--database-url", self.url],
            cwd=REPOSITORY, env=self.env, capture_output=True, text=True, timeout=120,
        )


@pytest.fixture(scope="module")
def tickets(tmp_path_factory: pytest.TempPathFactory, prefect_api_url: str) -> Store:
    """The README's examples, run once: the store they filled and what each printed."""
    folder = tmp_path_factory.mktemp("readme")
    url = f"sqlite:///{folder / 'store.db'}"
    env = cli_environment(
        prefect_api_url,
        folder / "prefect-home",
        BATCHPILOT_DATABASE_URL=url,
        TMPDIR=str(folder),
        # `python` and `batchpilot` are this environment's, as after the README's install.
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    # `python -m` and `python -c` put the working directory first on sys.path, as a shell or
    # a script in the repository's root does; nothing else is added.
    env.pop("PYTHONPATH")
    before = _repository_state()
    outputs = []
    for language, code in readme_examples():
        command = ["bash", "-e", "-c", code] if language == "bash" else [sys.executable, "-c", code]
        outputs.append(
            subprocess.run(command, cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=300)
        )
    return Store(url, env, folder, outputs, repository_unchanged=_repository_state() == before)


def test_the_readme_examples_run_as_written_and_leave_nothing_behind(tickets: Store) -> None:
    examples = readme_examples()
    assert [language for language, _ in examples] == ["bash", "python", "bash", "python"]
    for (language, code), completed in zip(examples, tickets.outputs):
        assert completed.returncode == 0, f"{language} example failed:\n{code}\n{completed.stderr}"
        lowered = completed.stderr.lower()
        assert "error" not in lowered and "traceback" not in lowered, completed.stderr
    run_cli, run_python, export, _ = (completed.stdout for completed in tickets.outputs)
    # The command line's run is the async processor's: it is awaited, and every item is done.
    assert ASYNC_PROCESSOR in examples[0][1] and "200 of 200 items done" in run_cli
    assert run_python.split()[1:] == ["200", "of", "200", "done"]
    assert len((tickets.folder / "tickets.csv").read_text(encoding="utf-8").splitlines()) == 201
    assert export.count("\n") == 2 and '"source": {"customer"' in export
    assert tickets.repository_unchanged


def _expected() -> dict[str, dict[str, object]]:
    """Each ticket's result as the processor gives it, called here directly."""
    items = list(iter_items(ItemSource(path=TICKETS)))
    return {result["item_id"]: result for result in classify(items)}


def test_export_gives_every_item_once_with_its_output_as_csv_and_json_lines(tickets: Store, tmp_path: Path) -> None:
    expected = _expected()
    written = tickets.cli("export", "--pipeline", "tickets", "--output", str(tmp_path / "results.csv"))
    assert written.returncode == 0, written.stderr
    streamed = tickets.cli("export", "--pipeline", "tickets", "--format", "jsonl")
    assert streamed.returncode == 0, streamed.stderr

    rows = list(csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text(encoding="utf-8"))))
    assert [row["id"] for row in rows] == list(expected)
    assert all(json.loads(row["output"]) == expected[row["id"]]["output"] for row in rows)
    assert {row["success"] for row in rows} == {"true"}

    lines = [json.loads(line) for line in streamed.stdout.splitlines()]
    assert [line["id"] for line in lines] == list(expected)
    assert all(line["output"] == expected[line["id"]]["output"] for line in lines)
    assert all(line["confidence"] == expected[line["id"]]["confidence"] for line in lines)

    # The stage of each item is the report's stage number, with as many items as it shows.
    report = json.loads(tickets.cli("report", "--pipeline", "tickets", "--json").stdout)
    per_stage = {stage["stage"]: stage["items"] for stage in report["stages"]}
    counted: dict[int, int] = {}
    for line in lines:
        counted[line["stage"]] = counted.get(line["stage"], 0) + 1
    assert counted == per_stage


def test_the_python_api_returns_the_rows_the_command_writes(tickets: Store) -> None:
    streamed = tickets.cli("export", "--pipeline", "tickets", "--format", "jsonl", "--with-source")
    engine = make_engine(tickets.url)
    try:
        run_id = json.loads(tickets.cli("report", "--pipeline", "tickets", "--json").stdout)["run"]["run_id"]
        rows = list(iter_results(engine, run_id, with_source=True, chunk_size=7))
    finally:
        engine.dispose()
    assert rows == [json.loads(line) for line in streamed.stdout.splitlines()]
    assert rows[0]["source"]["subject"] and "id" not in rows[0]["source"]


def test_export_writes_parquet_with_the_source_fields(tickets: Store, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow comes with the dev and parquet extras")
    written = tickets.cli(
        "export", "--pipeline", "tickets", "--with-source", "--output", str(tmp_path / "results.parquet")
    )
    assert written.returncode == 0, written.stderr

    table = pq.read_table(tmp_path / "results.parquet").to_pydict()
    source = {item.id: item.payload for item in iter_items(ItemSource(path=TICKETS))}
    assert table["id"] == list(source)
    assert table["source.subject"] == [payload["subject"] for payload in source.values()]
    assert all(json.loads(output) == _expected()[item]["output"] for item, output in zip(table["id"], table["output"]))


def test_runs_lists_the_runs_newest_first_and_filters_by_pipeline(tickets: Store) -> None:
    listed = tickets.cli("runs", "--json")
    assert listed.returncode == 0, listed.stderr
    runs = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(run["pipeline"], run["status"], run["items"], run["done"]) for run in runs] == [
        ("tickets-from-python", "completed", 200, 200),
        ("tickets", "completed", 200, 200),
    ]
    table = tickets.cli("runs", "--pipeline", "tickets")
    assert table.stdout.splitlines()[0].split()[:3] == ["pipeline", "run", "id"]
    assert [line.split()[1] for line in table.stdout.splitlines()[1:]] == [runs[1]["run_id"]]
    other = tickets.cli("runs", "--pipeline", "other")
    assert (other.returncode, other.stdout.strip()) == (0, "no run of pipeline 'other' in the store")


def test_report_by_pipeline_shows_reasons_in_full_with_wide(tickets: Store) -> None:
    report = json.loads(tickets.cli("report", "--pipeline", "tickets", "--json").stdout)
    reasons = [stage["reason"] for stage in report["stages"]]
    wide = tickets.cli("report", "--pipeline", "tickets", "--wide")
    assert wide.returncode == 0, wide.stderr
    assert all(reason in wide.stdout for reason in reasons if reason)
    # A reason speaks of stages and sizes, never of a batch's row id.
    assert not [reason for reason in reasons if re.search(r"\bbatch \d", reason or "")]
    missing = tickets.cli("report", "--pipeline", "other")
    assert (missing.returncode, missing.stderr.strip()) == (2, "error: no run of pipeline 'other' in the store")


def test_a_closed_pipe_ends_report_and_export_quietly(tmp_path: Path, prefect_api_url: str) -> None:
    # Outputs far larger than a pipe's buffer, so that the writer meets the closed pipe.
    url = f"sqlite:///{tmp_path / 'store.db'}"
    build_results_store(url, 3_000, stage_size=2)
    env = cli_environment(prefect_api_url, tmp_path / "prefect-home")
    for command in ("report --wide", "export --with-source --format jsonl"):
        completed = subprocess.run(
            f"{sys.executable} -m flows {command} --database-url {url} | head -1",
            shell=True, cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=120,
        )
        assert completed.stdout.count("\n") == 1, command
        assert completed.stderr == "", f"{command}: {completed.stderr}"


def test_errors_are_one_line_naming_the_fix(tmp_path: Path, prefect_api_url: str) -> None:
    env = cli_environment(prefect_api_url, tmp_path / "prefect-home")
    unreachable = "postgresql+psycopg://postgres@127.0.0.1:9/none"
    text_source = tmp_path / "tickets.txt"
    text_source.write_text(TICKETS.read_text(encoding="utf-8"), encoding="utf-8")
    run = ["run", "--source", str(text_source), "--processor", ASYNC_PROCESSOR]
    # A module hidden from the process, as after the plain install without the extra that brings it.
    hiding = "import sys; sys.modules[{!r}] = None; from flows.__main__ import main; sys.exit(main())"
    hidden = {"missing driver, run": "psycopg", "missing driver, export": "psycopg", "missing pyarrow": "pyarrow"}
    cases = {
        "missing driver, run": ([*run, "--format", "csv", "--database-url", unreachable], "install batchpilot[postgres]"),
        "missing driver, export": (["export", "--database-url", unreachable], "install batchpilot[postgres]"),
        "missing pyarrow": (
            ["export", "-o", str(tmp_path / "r.parquet"), "--database-url", unreachable], "install batchpilot[parquet]"
        ),
        "unreachable, runs": (["runs", "--database-url", unreachable], "check that the database is up"),
        "unreachable, run": ([*run, "--format", "csv", "--database-url", unreachable], "is up and reachable"),
        "unknown suffix, run": (run, "--format csv or --format jsonl"),
        "config value, run": ([*run, "--format", "csv", "--scaling-factor", "0.5"], "--scaling-factor 0.5: input"),
    }
    started = {
        case: subprocess.Popen(
            [sys.executable, "-c", hiding.format(hidden[case]), *arguments] if case in hidden
            else [sys.executable, "-m", "flows", *arguments],
            cwd=REPOSITORY, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for case, (arguments, _) in cases.items()
    }
    for case, process in started.items():
        stdout, stderr = process.communicate(timeout=120)
        lines = stderr.strip().splitlines()
        assert (process.returncode, stdout, len(lines)) == (2, "", 1), f"{case}:\n{stderr}"
        assert lines[0].startswith("error: ") and cases[case][1] in lines[0], f"{case}: {lines[0]}"
