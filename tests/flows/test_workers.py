"""Several worker processes on one PostgreSQL run, one of them killed mid-stage.

Four `python -m flows run --run-id R` processes share a run. One of them is slow and is
killed with SIGKILL while its second stage holds claimed items. The survivors take its
claims back once its liveness lock is gone, every item is done exactly once, each survivor
exits 0, and the run is completed once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import Engine

from scaling_core import make_engine, store
from tests.flows.processors import SLOW_SECONDS_ENV
from tests.flows.support import REPOSITORY, batches, claimed_later_stage, cli_environment, ledger, runs, write_csv

pytestmark = pytest.mark.postgres

ITEMS = 240
WORKERS = 4


def test_four_workers_one_killed_mid_stage_finish_every_item_once(
    tmp_path: Path, request: pytest.FixtureRequest, prefect_api_url: str
) -> None:
    url: str = request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    store.create_schema(engine)
    pipeline, run_id = f"workers-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    source = write_csv(tmp_path / "items.csv", ITEMS).path
    command = [
        sys.executable, "-m", "flows", "run", "--source", str(source),
        "--processor", "tests.flows.processors:slow_after_first_stage", "--pipeline", pipeline,
        "--run-id", run_id, "--database-url", url,
        "--initial-batch-size", "10", "--min-batch-size", "10", "--max-batch-size", "10",
    ]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for number in range(WORKERS):
            # Worker 0 holds its second stage for minutes: it is the one killed.
            slow = "120" if number == 0 else "0.2"
            env = cli_environment(prefect_api_url, tmp_path / f"home-{number}", **{SLOW_SECONDS_ENV: slow})
            with (tmp_path / f"worker-{number}.log").open("wb") as log:
                processes.append(
                    subprocess.Popen(command, cwd=REPOSITORY, env=env, stdout=log, stderr=subprocess.STDOUT)
                )
            if number == 0:
                _wait_for_a_long_claim(engine, pipeline, processes[0], tmp_path / "worker-0.log")
        os.kill(processes[0].pid, signal.SIGKILL)
        assert processes[0].wait(timeout=30) == -signal.SIGKILL
        codes = [process.wait(timeout=300) for process in processes[1:]]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
        engine.dispose()

    outputs = [(tmp_path / f"worker-{number}.log").read_text() for number in range(1, WORKERS)]
    assert codes == [0] * (WORKERS - 1), "\n\n".join(output[-2000:] for output in outputs)
    [run] = runs(url, pipeline)
    assert run.run_id == run_id and run.status == store.RunStatus.COMPLETED
    items = ledger(url, run_id)
    assert sorted(item.item_id for item in items) == sorted(f"i{n}" for n in range(ITEMS))
    assert {item.status for item in items} == {store.ItemStatus.DONE}
    records = batches(url, run_id)
    # Each item's result came from exactly one completed batch: nothing was done twice.
    assert sum(record.total_items for record in records if record.status == store.BatchStatus.COMPLETED) == ITEMS
    assert [record.status for record in records].count(store.BatchStatus.ABANDONED) == 1
    # Exactly one survivor completed the run; the others said the run was finished by another.
    assert sum("completed the run" in output for output in outputs) == 1, outputs


def _wait_for_a_long_claim(engine: Engine, pipeline: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while claimed_later_stage(engine, pipeline) is None:
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
