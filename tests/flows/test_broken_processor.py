"""A processor that raises on every call, through the real CLI: the run stops within a few stages
naming the exception, and nothing about it is learned as a batch size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scaling_core import store
from tests.flows.support import REPOSITORY, batches, cli_environment, runs, write_csv

PROCESSOR = '''
from pathlib import Path

BROKEN = Path(__file__).with_name("broken")


def process(items):
    if BROKEN.exists():
        raise ValueError("the endpoint refused the API key")
    return [{"item_id": item.id, "success": True, "confidence": 0.95} for item in items]
'''


def test_a_processor_that_raises_on_every_call_stops_the_run_and_teaches_no_size(
    tmp_path: Path, prefect_api_url: str
) -> None:
    (tmp_path / "keyed.py").write_text(PROCESSOR, encoding="utf-8")
    (tmp_path / "broken").touch()
    write_csv(tmp_path / "items.csv", 900)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    command = [
        sys.executable, "-m", "flows", "run", "--source", str(tmp_path / "items.csv"),
        "--processor", "keyed:process", "--pipeline", "keyed", "--database-url", url,
    ]
    env = cli_environment(prefect_api_url, tmp_path / "prefect-home", PYTHONPATH=f"{tmp_path}:{REPOSITORY}")

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=300)

    broken = run()
    assert broken.returncode != 0, broken.stdout
    last = broken.stderr.strip().splitlines()[-1]
    assert "keyed:process failed on every call" in last, broken.stderr[-3000:]
    assert "ValueError: the endpoint refused the API key" in last
    (first,) = runs(url, "keyed")
    stopped = batches(url, first.run_id)
    assert 3 <= len(stopped) <= 5, [b.batch_size for b in stopped]
    assert all(b.status == store.BatchStatus.FAILED_WHOLE for b in stopped)

    (tmp_path / "broken").unlink()
    fixed = run()
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    (resumed,) = runs(url, "keyed")
    assert resumed.run_id == first.run_id
    sizes = [b.batch_size for b in batches(url, first.run_id) if b.status != store.BatchStatus.FAILED_WHOLE]
    # The resumed run starts where the run began (50), not where the failures drove it, and
    # reaches the largest size: nothing of the failures was learned as a size.
    assert sizes[0] == 50, sizes
    assert max(sizes) == 200, sizes
    assert sum(b.total_items for b in batches(url, first.run_id) if b.status != store.BatchStatus.FAILED_WHOLE) == 900

    (tmp_path / "items.csv").write_text((tmp_path / "items.csv").read_text(encoding="utf-8"), encoding="utf-8")
    again = run()
    assert again.returncode == 0, again.stderr[-3000:]
    (second,) = [r for r in runs(url, "keyed") if r.run_id != first.run_id]
    warm = batches(url, second.run_id)[0].batch_size
    assert warm > 50, f"the next run warm-started at {warm}, under the initial size"
