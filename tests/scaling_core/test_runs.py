"""The rules of a run on real databases: resume, warm start, early stops, the next stage."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import select

from scaling_core import SourceError
from scaling_core import BatchManager, ConfidenceLevel, ItemResult, ItemSource, ScalingAction, ScalingConfig, ScalingDecision, store
from scaling_core.runs import (
    NextStage,
    RunEnd,
    RunMismatch,
    RunRequest,
    RunTally,
    check_inputs,
    decide_next_stage,
    finish_run,
    open_run,
    stop_run,
)

PROCESSOR = "scaling_core.samples.simulated_llm:simulated_llm_fast"


def _source(path: Path, count: int) -> ItemSource:
    path.write_text("id,name\n" + "".join(f"i{n},item {n}\n" for n in range(count)), encoding="utf-8")
    return ItemSource(path=path)


def _request(source: ItemSource, **changes: object) -> RunRequest:
    values: dict[str, object] = {"source": source, "processor": PROCESSOR, "pipeline": "p"}
    return RunRequest.model_validate({**values, **changes})


def _complete_a_batch(engine: Engine, run_id: str, size: int) -> None:
    batches = BatchManager(engine, run_id=run_id, pipeline="p", batch_size=size)
    claimed = batches.next_batch()
    assert claimed is not None
    results = [
        ItemResult(item_id=item.id, success=True, confidence=0.95, level=ConfidenceLevel.HIGH) for item in claimed.items
    ]
    batches.complete_batch(claimed, results, seconds=0.5)


def test_a_new_run_loads_its_whole_source_and_starts_at_the_initial_size(engine: Engine, tmp_path: Path) -> None:
    opened = open_run(engine, _request(_source(tmp_path / "a.csv", 12), scaling=ScalingConfig(initial_batch_size=20)))
    assert (opened.resumed, opened.batch_size, opened.why) == (False, 20, "initial_batch_size")
    assert opened.run.items_loaded and opened.run.item_count == 12
    with store.open_session(engine) as session:
        assert store.count_items(session, opened.run_id)[store.ItemStatus.PENDING] == 12


def test_a_rerun_resumes_the_unfinished_run_and_takes_back_dead_claims(engine: Engine, tmp_path: Path) -> None:
    source = _source(tmp_path / "a.csv", 30)
    first = open_run(engine, _request(source))
    dead = BatchManager(engine, run_id=first.run_id, pipeline="p", batch_size=10).next_batch()
    assert dead is not None  # a stage that died holding 10 claims
    first.close()  # its process is gone
    again = open_run(engine, _request(source))
    assert again.resumed and again.run_id == first.run_id
    with store.open_session(engine) as session:
        counts = store.count_items(session, first.run_id)
    assert (counts[store.ItemStatus.PENDING], counts[store.ItemStatus.PROCESSING]) == (30, 0)


def test_an_unfinished_run_of_another_file_is_neither_resumed_nor_left_behind(engine: Engine, tmp_path: Path) -> None:
    first = open_run(engine, _request(_source(tmp_path / "a.csv", 5)))
    first.close()
    with pytest.raises(RunMismatch, match=rf"the unfinished run {first.run_id} of pipeline 'p' was loaded from "
                       rf"{tmp_path / 'a.csv'}, not {tmp_path / 'b.csv'}\. .* rerun with --new-run"):
        open_run(engine, _request(_source(tmp_path / "b.csv", 5)))
    other = open_run(engine, _request(_source(tmp_path / "b.csv", 5), new_run=True))
    assert not other.resumed and other.run_id != first.run_id
    with store.open_session(engine) as session:
        superseded = store.get_run(session, first.run_id)
        assert superseded is not None and superseded.status == store.RunStatus.SUPERSEDED


def test_a_changed_file_is_refused_naming_the_change_and_new_run_loads_it_afresh(engine: Engine, tmp_path: Path) -> None:
    source = _source(tmp_path / "a.csv", 5)
    first = open_run(engine, _request(source))
    first.close()
    _source(tmp_path / "a.csv", 7)  # rows added after the load
    with pytest.raises(RunMismatch, match=r"when it held other content .*: the file changed"):
        open_run(engine, _request(source))
    fresh = open_run(engine, _request(source, new_run=True))
    assert fresh.run_id != first.run_id and fresh.run.item_count == 7
    fresh.close()


def test_the_same_file_by_a_relative_or_an_absolute_path_is_the_same_run(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _source(tmp_path / "a.csv", 5)
    first = open_run(engine, _request(ItemSource(path=Path("a.csv"))))
    first.close()
    again = open_run(engine, _request(ItemSource(path=tmp_path / "a.csv")))
    assert again.resumed and again.run_id == first.run_id
    assert again.run.source == str(tmp_path / "a.csv")
    again.close()


def test_a_file_that_changes_while_it_is_loaded_is_never_marked_loaded(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scaling_core import runs as runs_module

    source = _source(tmp_path / "a.csv", 30)
    real = runs_module.iter_item_batches

    def changing(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        for number, chunk in enumerate(real(*args, **kwargs)):  # type: ignore[arg-type]
            yield chunk
            if number == 0:  # someone rewrites the file after the first chunk was loaded
                with (tmp_path / "a.csv").open("a", encoding="utf-8") as handle:
                    handle.write("late,row\n")

    monkeypatch.setattr(runs_module, "LOAD_CHUNK", 10)
    monkeypatch.setattr(runs_module, "iter_item_batches", changing)
    with pytest.raises(SourceError, match="changed while it was being loaded"):
        open_run(engine, _request(source))
    with store.open_session(engine) as session:
        [run] = session.exec(select(store.PipelineRun)).all()
    assert not run.items_loaded
    monkeypatch.setattr(runs_module, "iter_item_batches", real)
    with pytest.raises(RunMismatch, match="the file changed"):
        open_run(engine, _request(source))


def test_a_run_id_of_other_work_is_refused_naming_both(engine: Engine, tmp_path: Path) -> None:
    first = open_run(engine, _request(_source(tmp_path / "a.csv", 5)))
    with pytest.raises(RunMismatch, match=rf"run {first.run_id} was loaded from .*a.csv, not .*b.csv"):
        open_run(engine, _request(_source(tmp_path / "b.csv", 5), run_id=first.run_id))


def test_the_next_run_warm_starts_from_the_last_decision_unless_told_not_to(engine: Engine, tmp_path: Path) -> None:
    scaling = ScalingConfig(initial_batch_size=20, min_batch_size=10, max_batch_size=60)
    first = open_run(engine, _request(_source(tmp_path / "a.csv", 40), scaling=scaling))
    _complete_a_batch(engine, first.run_id, 20)
    with store.open_session(engine) as session:
        decision = ScalingDecision(action=ScalingAction.INCREASE, new_batch_size=90, reason="r", confidence_threshold=0.9)
        store.record_decision(session, run_id=first.run_id, pipeline="p", batch_id=None, old_size=20, decision=decision)
    assert finish_run(engine, first.run_id) == RunEnd(completed_here=False, in_progress=20)  # the run stays open
    first.close()
    warm = open_run(engine, _request(_source(tmp_path / "b.csv", 5), scaling=scaling, new_run=True))
    assert (warm.batch_size, warm.why) == (60, "warm start from the last learned size 90")
    warm.close()
    cold = open_run(engine, _request(_source(tmp_path / "c.csv", 5), scaling=scaling, warm_start=False, new_run=True))
    assert cold.batch_size == 20


def test_the_next_stage_is_decided_from_the_stored_batches_and_persisted(engine: Engine, tmp_path: Path) -> None:
    scaling = ScalingConfig(initial_batch_size=10, min_batch_size=10, max_batch_size=100, min_batches_for_scaling=1)
    opened = open_run(engine, _request(_source(tmp_path / "a.csv", 100), scaling=scaling))
    _complete_a_batch(engine, opened.run_id, 10)
    next_stage, decision = decide_next_stage(
        engine, run_id=opened.run_id, pipeline="p", scaling=scaling, batch_size=10, remaining_items=90
    )
    assert next_stage == NextStage.of(decision) and next_stage.stop is None
    with store.open_session(engine) as session:
        [record] = store.run_decisions(session, opened.run_id)
    assert (record.old_size, record.new_size, record.reason) == (10, next_stage.batch_size, decision.reason)


def test_a_decision_names_a_deterministic_stop_and_the_unmet_constraints() -> None:
    decision = ScalingDecision(
        action=ScalingAction.MAINTAIN,
        new_batch_size=20,
        reason="ValueError on every call",
        confidence_threshold=0.9,
        performance_metrics={"deterministic_failures": 3.0, "quality_unmet": 1.0},
    )
    assert NextStage.of(decision) == NextStage(
        batch_size=20, stop="ValueError on every call", unmet=("quality",), reason="ValueError on every call"
    )


def test_the_tally_stops_after_n_whole_failures_in_a_row_and_warns_once_per_constraint() -> None:
    tally = RunTally(run_id="r1", processor="m:f", items=100, finished=10, max_failed_stages_in_a_row=3)
    assert tally.after_stage(successful=20, failed_whole=False, error=None) is None
    assert (tally.finished, tally.remaining, tally.progress) == (30, 70, 30.0)
    assert tally.after_stage(successful=0, failed_whole=True, error="E1") is None
    assert tally.after_stage(successful=0, failed_whole=True, error="E2") is None
    assert tally.after_stage(successful=0, failed_whole=True, error="E3") == (
        "3 stages in a row failed whole (last: E3); stopping run r1: its items are pending again, rerun to resume"
    )
    unmet = NextStage(batch_size=10, unmet=("quality",))
    assert [tally.new_unmet(unmet), tally.new_unmet(unmet), tally.new_unmet(NextStage(batch_size=10))] == [
        True, False, False,
    ]
    broken = tally.after_decision(NextStage(batch_size=10, stop="ValueError: bad"))
    assert broken is not None and broken.startswith("processor m:f failed on every call, whatever the batch size")
    assert tally.after_decision(NextStage(batch_size=10)) is None


def test_a_stopped_run_is_failed_and_resumable(engine: Engine, tmp_path: Path) -> None:
    source = _source(tmp_path / "a.csv", 5)
    opened = open_run(engine, _request(source))
    error = stop_run(engine, opened.run_id, "stop now")
    assert str(error) == "stop now"
    opened.close()
    with store.open_session(engine) as session:
        run = store.get_run(session, opened.run_id)
        assert run is not None and run.status == store.RunStatus.FAILED
    assert open_run(engine, _request(source)).run_id == opened.run_id


def test_a_finished_run_is_completed(engine: Engine, tmp_path: Path) -> None:
    opened = open_run(engine, _request(_source(tmp_path / "a.csv", 10)))
    _complete_a_batch(engine, opened.run_id, 10)
    assert finish_run(engine, opened.run_id) == RunEnd(completed_here=True, in_progress=0)
    # A second worker finishing the same run at once does not complete it again.
    assert finish_run(engine, opened.run_id) == RunEnd(completed_here=False, in_progress=0)
    with store.open_session(engine) as session:
        run = store.get_run(session, opened.run_id)
        assert run is not None and run.status == store.RunStatus.COMPLETED


def test_inputs_are_checked_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="limit must be positive when given, got 0"):
        check_inputs(_source(tmp_path / "a.csv", 3), PROCESSOR, 0)
    with pytest.raises(ValueError, match="module 'nope' not found"):
        check_inputs(_source(tmp_path / "a.csv", 3), "nope:process", None)
    assert check_inputs(_source(tmp_path / "a.csv", 3), PROCESSOR, None).item_count == 3


def test_the_tally_stops_after_fewer_timeouts_in_a_row_than_other_failures() -> None:
    tally = RunTally(
        run_id="r1", processor="m:f", items=50, finished=0, max_failed_stages_in_a_row=8, max_timed_out_stages_in_a_row=2
    )
    assert tally.after_stage(successful=0, failed_whole=True, error="stage timed out after 600 s", timed_out=True) is None
    assert tally.after_stage(successful=0, failed_whole=True, error="ValueError: x") is None  # not a timeout: reset
    assert tally.after_stage(successful=0, failed_whole=True, error="stage timed out after 600 s", timed_out=True) is None
    stop = tally.after_stage(successful=0, failed_whole=True, error="stage timed out after 600 s", timed_out=True)
    assert stop == (
        "2 stages in a row outlived the stage timeout (last: stage timed out after 600 s); stopping run r1: "
        "its items are pending again; raise --stage-timeout-seconds if the processor needs longer, then rerun to resume"
    )


def test_a_run_held_by_a_live_opener_on_sqlite_is_refused_until_it_lets_go(tmp_path: Path) -> None:
    engine = store.make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    store.create_schema(engine)
    source = _source(tmp_path / "a.csv", 5)
    try:
        first = open_run(engine, _request(source))
        with pytest.raises(store.RunBusy, match=f"run {first.run_id} is being processed by another live process"):
            open_run(engine, _request(source))
        first.close()
        again = open_run(engine, _request(source))
        assert again.run_id == first.run_id and again.resumed
        again.close()
    finally:
        engine.dispose()


def test_items_that_crash_alone_one_after_another_stop_the_run() -> None:
    tally = RunTally(run_id="r1", processor="m:f", items=100, finished=0, max_failed_stages_in_a_row=3)
    # One poison item in a batch of 8, always in the half that runs first: 8, 4, 2 items
    # crash, then it crashes alone, its attempts used up; the items after it are done.
    for items in (8, 4, 2):
        assert tally.after_stage(successful=0, failed_whole=False, error="died", crashed=True) is None, items
    assert tally.after_stage(successful=0, failed_whole=False, error="died", crashed=True, crashed_for_good=1) is None
    assert tally.after_stage(successful=7, failed_whole=False, error=None) is None
    assert tally.after_stage(successful=0, failed_whole=False, error="died", crashed=True, crashed_for_good=1) is None
    # A second item failed alone with no item done since: the processor crashes on everything.
    stop = tally.after_stage(successful=0, failed_whole=False, error="died (SIGKILL)", crashed=True, crashed_for_good=1)
    assert stop is not None and stop.startswith(
        "processor m:f crashed its process on 2 items in a row, each alone, with no item done in between "
        "(last: died (SIGKILL))"
    )
