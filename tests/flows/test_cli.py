"""The command line, run as a user runs it: `python -m flows ...` in a process of its own."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.flows.fault_support import pipeline_flow_runs
from tests.flows.support import FAST_PROCESSOR, REPOSITORY, cli_environment, stored_rows, write_csv

Run = Callable[[str], subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def run_cli(tmp_path_factory: pytest.TempPathFactory, prefect_api_url: str) -> Run:
    """Runs `python -m flows run` on one of the bad inputs below, once per input."""
    folder = tmp_path_factory.mktemp("cli")
    write_csv(folder / "items.csv", 10)
    arguments = {
        "missing source": ["--source", str(folder / "missing.csv"), "--processor", FAST_PROCESSOR],
        "processor path syntax": ["--source", str(folder / "items.csv"), "--processor", "not a path"],
        "min above max": [
            "--source", str(folder / "items.csv"), "--processor", FAST_PROCESSOR,
            "--min-batch-size", "300", "--max-batch-size", "100",
        ],
    }
    done: dict[str, subprocess.CompletedProcess[str]] = {}

    def run(case: str) -> subprocess.CompletedProcess[str]:
        if case not in done:
            store_file = folder / f"{case.replace(' ', '-')}.db"
            done[case] = subprocess.run(
                [sys.executable, "-m", "flows", "run", *arguments[case], "--database-url", f"sqlite:///{store_file}"],
                cwd=REPOSITORY, env=cli_environment(prefect_api_url, folder / "prefect-home"),
                capture_output=True, text=True, timeout=120,
            )
            assert not any(stored_rows(store_file).values()), f"{case}: the store was written"
        return done[case]

    return run


def test_run_with_a_missing_source_exits_2_naming_the_file(run_cli: Run) -> None:
    completed = run_cli("missing source")
    assert completed.returncode == 2, completed.stderr
    assert completed.stdout == ""
    last = completed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and last.endswith("missing.csv: file not found"), completed.stderr


@pytest.mark.parametrize(
    ("case", "named"),
    [("missing source", "missing.csv"), ("processor path syntax", "processor"), ("min above max", "min_batch_size")],
)
def test_bad_input_gives_one_error_line_and_exit_status_2(run_cli: Run, case: str, named: str) -> None:
    completed = run_cli(case)
    lines = completed.stderr.strip().splitlines()
    assert (completed.returncode, len(lines)) == (2, 1), f"exit status {completed.returncode}:\n{completed.stderr}"
    assert lines[0].startswith("error: ") and named in lines[0]


def test_report_names_a_missing_store_and_an_empty_one(tmp_path: Path, prefect_api_url: str) -> None:
    database = tmp_path / "store.db"

    def report() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "flows", "report", "--database-url", f"sqlite:///{database}"],
            cwd=REPOSITORY, capture_output=True, text=True, timeout=60,
            env=cli_environment(prefect_api_url, tmp_path / "prefect-home"),
        )

    missing = report()
    assert (missing.returncode, missing.stderr.strip()) == (
        2,
        f"error: no store at sqlite:///{database}: the SQLite file does not exist",
    )
    assert not database.exists(), "a read-only command must not create the store"
    sqlite3.connect(database).close()
    empty = report()
    assert (empty.returncode, empty.stderr.strip()) == (
        2,
        f"error: the store at sqlite:///{database} holds no run yet",
    )


MY_PROCESSOR = '''
def process(items):
    return [{"item_id": item.id, "success": True, "confidence": 0.9} for item in items]
'''


@pytest.mark.parametrize("entry", ["script", "module"])
def test_the_script_and_the_module_import_processors_from_the_working_directory(
    entry: str, tmp_path: Path, prefect_api_url: str
) -> None:
    (tmp_path / "mine.py").write_text(MY_PROCESSOR, encoding="utf-8")
    write_csv(tmp_path / "items.csv", 12)
    command = [str(Path(sys.executable).with_name("batchpilot"))] if entry == "script" else [sys.executable, "-m", "flows"]
    completed = subprocess.run(
        [*command, "run", "--source", "items.csv", "--processor", "mine:process",
         "--database-url", f"sqlite:///{tmp_path / 'store.db'}"],
        cwd=tmp_path, env=cli_environment(prefect_api_url, tmp_path / "prefect-home"),
        capture_output=True, text=True, timeout=180,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "12 of 12 items done" in completed.stdout, completed.stdout


def test_a_malformed_or_unreachable_store_is_one_line_naming_it_and_no_flow_run(
    tmp_path: Path, prefect_api_url: str
) -> None:
    write_csv(tmp_path / "items.csv", 5)
    pipeline = f"bad-store-{tmp_path.name}"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    cases = {
        "run, malformed port": (
            ["run", "--source", "items.csv", "--processor", FAST_PROCESSOR, "--pipeline", pipeline,
             "--database-url", "postgresql://app:s3cret@127.0.0.1:54x2/jobs"],
            "error: the database URL postgresql://app:***@127.0.0.1:54x2/jobs cannot be read: its port is not a number",
        ),
        "report, malformed port": (
            ["report", "--database-url", "postgresql://app:s3cret@127.0.0.1:54x2/jobs"],
            "error: the database URL postgresql://app:***@127.0.0.1:54x2/jobs cannot be read: its port is not a number",
        ),
        "report, nobody listening": (
            ["report", "--database-url", f"postgresql+psycopg://app:s3cret@127.0.0.1:{closed_port}/jobs"],
            f"error: the store at postgresql+psycopg://app:***@127.0.0.1:{closed_port}/jobs failed: OperationalError: ",
        ),
    }
    for case, (arguments, expected) in cases.items():
        completed = subprocess.run(
            [sys.executable, "-m", "flows", *arguments], cwd=tmp_path, capture_output=True, text=True, timeout=120,
            env=cli_environment(prefect_api_url, tmp_path / "prefect-home"),
        )
        assert (completed.returncode, completed.stdout) == (2, ""), f"{case}: {completed.stderr}"
        assert completed.stderr.count("\n") == 1 and completed.stderr.startswith(expected), f"{case}: {completed.stderr}"
        assert "s3cret" not in completed.stderr
    assert pipeline_flow_runs(pipeline) == []


def test_a_changed_source_is_refused_naming_the_change_and_new_run_starts_afresh(
    tmp_path: Path, prefect_api_url: str
) -> None:
    source = tmp_path / "items.csv"
    write_csv(source, 30)
    database = tmp_path / "store.db"

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable, "-m", "flows", "run", "--source", str(source), "--database-url", f"sqlite:///{database}",
                "--processor", "tests.flows.processors:fails_whole_above_20", "--pipeline", "tickets", *extra,
            ],
            cwd=REPOSITORY, env=cli_environment(prefect_api_url, tmp_path / "prefect-home"),
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    # A first stage of 30 items fails whole, and one such stage stops the run: it stays unfinished.
    stopped = run("--initial-batch-size", "30", "--max-failed-stages-in-a-row", "1")
    assert stopped.returncode != 0, stopped.stdout
    write_csv(source, 31)  # the file changes before the rerun

    refused = run()
    lines = refused.stderr.strip().splitlines()
    assert (refused.returncode, len(lines)) == (2, 1), refused.stderr
    assert "changed" in lines[0] and "--new-run" in lines[0], lines[0]

    fresh = run("--new-run", "--initial-batch-size", "20", "--max-batch-size", "20")
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout.startswith("starting run "), fresh.stdout
    assert "31 of 31 items done" in fresh.stdout
    with sqlite3.connect(database) as connection:
        statuses = sorted(status for (status,) in connection.execute("SELECT status FROM pipeline_run"))
    assert statuses == ["COMPLETED", "SUPERSEDED"]
