"""The add-on's loop bridge and prompt broker, without Blender: operations run off the calling thread,
report progress, really stop on cancel, and questions wait for an answer from another thread."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from braas_hpc.addon_kit.bridge import Bridge
from braas_hpc.addon_kit.prompting import PromptBroker
from braas_hpc.core import progress


@pytest.fixture
def bridge():  # noqa: ANN201
    running = Bridge()
    yield running
    running.stop()


def test_operation_runs_on_the_loop_thread_and_reports_progress(bridge: Bridge) -> None:
    seen: list[str] = []

    async def work() -> str:
        seen.append(threading.current_thread().name)
        for done in range(1, 4):
            progress.report("counting", done, 3)
            await asyncio.sleep(0.01)
        return "result"

    operation = bridge.run("Count", work)
    assert operation.result(5) == "result"
    assert seen == ["braas-hpc-loop"]
    snap = operation.snapshot()
    assert (snap.stage, snap.done, snap.total, snap.fraction) == ("counting", 3, 3, 1.0)
    assert bridge.take_finished() == [operation] and bridge.take_finished() == []


def test_progress_of_two_operations_does_not_mix(bridge: Bridge) -> None:
    gate = threading.Event()

    async def work(stage: str, done: int) -> None:
        progress.report(stage, done, 10)
        await asyncio.to_thread(gate.wait, 5)

    first, second = bridge.run("A", lambda: work("a", 1)), bridge.run("B", lambda: work("b", 7))
    deadline = time.monotonic() + 5
    while (first.snapshot().stage, second.snapshot().stage) != ("a", "b") and time.monotonic() < deadline:
        time.sleep(0.01)
    gate.set()
    first.result(5), second.result(5)
    assert (first.snapshot().done, second.snapshot().done) == (1, 7)


def test_cancel_stops_the_work_where_it_is(bridge: Bridge) -> None:
    reached: list[str] = []

    async def long_work() -> None:
        try:
            await asyncio.sleep(60)
            reached.append("end")
        finally:
            reached.append("cleanup")

    operation = bridge.run("Long", long_work)
    time.sleep(0.1)
    assert operation.cancel()
    deadline = time.monotonic() + 30  # a hang detector, not a speed limit: uncancelled, "end" comes at 60 s
    while "cleanup" not in reached and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reached == ["cleanup"]
    assert operation.cancelled and operation.error() is None
    assert bridge.active() == []


def test_errors_come_back_to_the_caller(bridge: Bridge) -> None:
    async def failing() -> None:
        raise ValueError("bad value")

    operation = bridge.run("Fail", failing)
    with pytest.raises(ValueError, match="bad value"):
        operation.result(5)
    assert isinstance(operation.error(), ValueError)


def test_stop_ends_the_thread_and_cancels_what_runs() -> None:
    bridge = Bridge()
    operation = bridge.run("Forever", lambda: asyncio.sleep(3600))
    bridge.stop()
    assert not bridge.running and operation.cancelled
    assert not any(t.name == "braas-hpc-loop" for t in threading.enumerate())


def test_broker_without_a_user_answers_nothing_at_once() -> None:
    broker = PromptBroker(lambda: False)
    started = time.monotonic()
    assert broker.passphrase("/k") is None and broker.kbdint("", "", [("Code: ", False)]) is None
    # Far below "forever" (waiting for a user who is not there), with room for a loaded CI machine.
    assert time.monotonic() - started < 5 and broker.next_question() is None


def test_broker_question_waits_for_the_main_thread() -> None:
    broker = PromptBroker(lambda: True)
    answers: list[object] = []
    worker = threading.Thread(target=lambda: answers.append(broker.kbdint("TOTP", "", [("Code: ", False)])))
    worker.start()
    deadline = time.monotonic() + 5
    while (question := broker.next_question()) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert question is not None and question.fields == [("Code: ", False)]
    question.answer(["123456"])
    worker.join(5)
    assert answers == [["123456"]]
    assert question.wait(0) is None  # the answer is not kept once handed over


def test_refuse_all_releases_a_waiting_question() -> None:
    broker = PromptBroker(lambda: True)
    answers: list[object] = []
    worker = threading.Thread(target=lambda: answers.append(broker.passphrase("/key")))
    worker.start()
    deadline = time.monotonic() + 5
    while broker._questions.empty() and time.monotonic() < deadline:
        time.sleep(0.01)
    broker.refuse_all()
    worker.join(5)
    assert answers == [None] and not worker.is_alive()
