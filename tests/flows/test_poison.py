"""A processor that kills its own process on one item, run from the command line as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.flows.fault_processors import BROKEN_FLAG, POISON_ITEM
from tests.flows.support import batches, cli_environment, ledger, runs, stages, write_csv

PROCESSOR = "tests.flows.fault_processors:kills_its_process_on_poison"
ITEMS = 20
MAX_RERUNS = 8


def _run(
    folder: Path, api_url: str, *options: str, processor: str = PROCESSOR, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "flows", "run", "--source", "items.csv", "--processor", processor,
            "--database-url", f"sqlite:///{folder / 'store.db'}", "--no-warm-start",
            "--initial-batch-size", "4", "--min-batch-size", "1", "--max-batch-size", "8", *options,
        ],
        cwd=folder,
        env={**cli_environment(api_url, folder / "prefect-home"), **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
    )


def _assert_poison_isolated(url: str) -> None:
    """The poison item failed for good with a crash error; every other item done once; nothing left."""
    [run] = runs(url)
    items = {item.item_id: item for item in ledger(url, run.run_id)}
    poison = items.pop(POISON_ITEM)
    assert poison.status == "failed" and poison.attempts >= 3, (poison.status, poison.attempts)
    assert poison.error is not None and "died" in poison.error and "a batch of 1 item" in poison.error, poison.error
    assert {item.status for item in items.values()} == {"done"}, {i.item_id: i.status for i in items.values()}
    records = batches(url, run.run_id)
    completed = {record.id: record for record in records if record.status == "completed"}
    assert all(item.batch_id in completed for item in items.values())
    assert sum(record.successful_items for record in completed.values()) == ITEMS - 1, "an item was done twice"
    assert "processing" not in {record.status for record in records}
    assert run.status == "completed"


def test_reruns_isolate_an_item_that_kills_the_process(tmp_path: Path, prefect_api_url: str) -> None:
    # Each run dies on a batch that holds the poison item; the next takes that batch back,
    # counts an attempt, and claims half of it, until the poison item dies alone, its
    # attempts used up. Without crash accounting every rerun would die on the first batch.
    write_csv(tmp_path / "items.csv", ITEMS)
    codes: list[int] = []
    while not codes or codes[-1] != 0:
        assert len(codes) < MAX_RERUNS, f"still crashing after {len(codes)} runs: {codes}"
        completed = _run(tmp_path, prefect_api_url)
        codes.append(completed.returncode)
        assert completed.returncode in (0, -9), completed.stderr[-3000:]
    # A batch of 4 dies; of its halves 2 + 2 the second dies; of that, 1 + 1 the second dies alone.
    assert codes == [-9, -9, -9, 0]
    _assert_poison_isolated(f"sqlite:///{tmp_path / 'store.db'}")


def test_a_processor_in_a_child_process_costs_a_batch_not_the_run(tmp_path: Path, prefect_api_url: str) -> None:
    write_csv(tmp_path / "items.csv", ITEMS)
    completed = _run(tmp_path, prefect_api_url, "--isolate-processor")
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert f"{ITEMS - 1} of {ITEMS} items done, 1 failed for good, 0 pending" in completed.stdout, completed.stdout
    url = f"sqlite:///{tmp_path / 'store.db'}"
    _assert_poison_isolated(url)
    [run] = runs(url)
    records = batches(url, run.run_id)
    crashed = [(record.total_items, record.error) for record in records if record.status == "abandoned"]
    died = "the processor's process died (killed by SIGKILL); its {} item{} taken back, one attempt each"
    assert crashed == [(4, died.format(4, "s")), (2, died.format(2, "s")), (1, died.format(1, ""))]
    # Bisection ran in stages of its own, which the manager neither learned from nor followed:
    # no decision after them, and the first stage after them has the size it chose before.
    isolation = [record for record in records if record.suspects_of is not None]
    assert [record.total_items for record in isolation] == [2, 2, 1, 1]
    decided = {row["stage"] for row in stages(url, run.run_id) if row["action"] is not None}
    assert decided and not decided & {record.stage for record in isolation}
    [first_after] = [record for record in records if record.stage == isolation[-1].stage + 1]
    assert (first_after.suspects_of, first_after.batch_size) == (None, 4)


def test_a_processor_that_crashes_on_every_item_stops_the_run_before_it_uses_up_the_items(
    tmp_path: Path, prefect_api_url: str
) -> None:
    write_csv(tmp_path / "items.csv", ITEMS)
    flag = tmp_path / "broken"
    flag.touch()
    broken = {BROKEN_FLAG: str(flag)}
    processor = "tests.flows.fault_processors:kills_its_process_while_broken"
    stopped = _run(tmp_path, prefect_api_url, "--isolate-processor", processor=processor, env=broken)
    assert stopped.returncode != 0, stopped.stdout[-3000:]
    output = stopped.stdout + stopped.stderr
    assert f"processor {processor} crashed its process on 2 items in a row, each alone" in output, output[-3000:]
    url = f"sqlite:///{tmp_path / 'store.db'}"
    [run] = runs(url)
    crashed = [record for record in batches(url, run.run_id) if record.status == "abandoned"]
    # A batch of 4 crashes, then 2 of its items, then one alone (failed for good), then the other.
    assert [record.total_items for record in crashed] == [4, 2, 1, 1]
    statuses = [item.status for item in ledger(url, run.run_id)]
    assert statuses.count("failed") == 2 and statuses.count("done") == 0, statuses
    flag.unlink()  # the processor is fixed
    resumed = _run(tmp_path, prefect_api_url, "--isolate-processor", processor=processor, env=broken)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    [again] = runs(url)
    assert again.run_id == run.run_id and again.status == "completed"
    items = ledger(url, run.run_id)
    failed = [item for item in items if item.status == "failed"]
    assert len(failed) == statuses.count("failed") and all("died" in (item.error or "") for item in failed)
    assert sum(item.status == "done" for item in items) == ITEMS - len(failed)
