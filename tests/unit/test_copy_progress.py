"""The bridge from copy threads to the event loop, with real threads and a real loop: calls run on the
loop in order, an exception stops the copy, and a loop that stalls, stops or closes never holds a copy
thread for good nor loses the last position."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from braas_hpc.core.transport.copy_progress import CopyProgress

MIB = 1 << 20
JOIN_S = 60  # a guard against a hang, not a measure: every thread here ends long before


class LoopThread:
    """An event loop running on its own thread, like the add-on's."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(JOIN_S)
            self.loop.close()


@pytest.fixture
def looping() -> Iterator[LoopThread]:
    running = LoopThread()
    yield running
    running.stop()


def copy_on_thread(work: object) -> BaseException | None:
    """Run `work()` on a thread of its own (as a copy does); what it raised, if anything."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            work()  # type: ignore[operator]
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            failure.append(exc)

    thread = threading.Thread(target=run, name="test-copy")
    thread.start()
    thread.join(JOIN_S)
    assert not thread.is_alive(), "the copy thread is still blocked"
    return failure[0] if failure else None


def test_calls_run_on_the_loop_in_order_once_per_step_and_at_the_end(looping: LoopThread) -> None:
    seen: list[tuple[int, int, str]] = []
    report = CopyProgress(lambda done, total: seen.append((done, total, threading.current_thread().name)),
                          looping.loop)
    total = 5 * MIB + 10

    def copy() -> None:
        for done in range(0, total, 256 * 1024):  # quarter-MiB blocks: only every fourth is shown
            report(done, total)
        report(total, total, final=True)
        report(total, total, final=True)  # the same position again is not shown twice

    assert copy_on_thread(copy) is None
    assert [(d, t) for d, t, _ in seen] == [*((n * MIB, total) for n in range(1, 6)), (total, total)]
    assert {name for _, _, name in seen} == {"test-loop"}


def test_a_failing_callback_stops_the_copy_at_that_point(looping: LoopThread) -> None:
    reached: list[int] = []

    def progress(done: int, total: int) -> None:
        if done >= 2 * MIB:
            raise InterruptedError("stop here")

    report = CopyProgress(progress, looping.loop)

    def copy() -> None:
        for block in range(1, 9):
            reached.append(block)
            report(block * MIB, 8 * MIB)

    error = copy_on_thread(copy)
    assert isinstance(error, InterruptedError) and reached == [1, 2]


def test_a_stalled_loop_does_not_hold_the_copy_and_gets_the_latest_position(looping: LoopThread) -> None:
    seen: list[int] = []
    release = threading.Event()
    looping.loop.call_soon_threadsafe(release.wait)  # the loop is busy until the copy has finished
    report = CopyProgress(lambda done, _total: seen.append(done), looping.loop, wait_s=0.05)

    def copy() -> None:
        for block in range(1, 9):
            report(block * MIB, 8 * MIB, final=block == 8)

    assert copy_on_thread(copy) is None
    assert seen == []  # nothing could run yet
    release.set()
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0), looping.loop).result(JOIN_S)  # the queue has drained
    assert seen == [8 * MIB]  # one queued call, showing the last position


def test_a_late_failure_stops_the_copy_at_its_next_report(looping: LoopThread) -> None:
    release = threading.Event()
    looping.loop.call_soon_threadsafe(release.wait)
    calls: list[int] = []

    def progress(done: int, _total: int) -> None:
        calls.append(done)
        raise InterruptedError("cancelled by the user")

    report = CopyProgress(progress, looping.loop, wait_s=0.05)
    assert copy_on_thread(lambda: report(MIB, 8 * MIB)) is None  # the loop did not run it in time
    release.set()
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0), looping.loop).result(JOIN_S)
    assert calls == [MIB]
    error = copy_on_thread(lambda: report(2 * MIB, 8 * MIB))
    assert isinstance(error, InterruptedError) and calls == [MIB]


def test_a_stopped_or_closed_loop_never_blocks_the_copy() -> None:
    running = LoopThread()
    running.loop.call_soon_threadsafe(running.loop.stop)  # what the add-on does on unregister: stop, no close
    running.thread.join(JOIN_S)
    seen: list[int] = []
    report = CopyProgress(lambda done, _total: seen.append(done), running.loop, wait_s=0.05)
    assert copy_on_thread(lambda: [report(n * MIB, 4 * MIB, final=n == 4) for n in range(1, 5)]) is None
    running.loop.close()
    closed = CopyProgress(lambda done, _total: seen.append(done), running.loop)
    assert copy_on_thread(lambda: closed(MIB, MIB, final=True)) is None
    assert seen == []


def test_without_a_callback_nothing_is_posted() -> None:
    loop = asyncio.new_event_loop()
    loop.close()  # posting to it would fail: the bridge must not even try
    report = CopyProgress(None, loop)
    report(MIB, MIB, final=True)
