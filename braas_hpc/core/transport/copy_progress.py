"""Progress from a copy thread to the event loop: the one bridge of every back end that copies on threads.

OpenSSH's pipe copies and paramiko's SFTP and scp copies run on worker threads, while a progress
callback belongs on the event loop (it may touch asyncio or UI objects, as with asyncssh, whose copies
report on the loop already). The thread waits for each call it posts, so a responsive loop shows the
real position and an exception the callback raises stops the copy at that point.

The policy for a loop that does not run the call: the copy thread never blocks for good, and no
report is dropped. After WAIT_S the thread copies on; its call stays queued and later reports only
move the position it will show, so a stalled loop gets one call with the latest figure when it runs
again. Why not wait as long as the loop lives: the add-on stops its loop without closing it, and a
callback can block (a paused terminal); a copy waiting on that would hold its connection and thread
for ever, while a late progress figure loses nothing (each one supersedes the one before).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from .base import Progress

STEP = 1 << 20  # a callback at most once per MiB (and at the end)
WAIT_S = 10.0  # how long a copy thread waits for the loop to run one call
_POLL_S = 1.0  # how often a waiting thread looks whether the loop closed


def post(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: Any) -> bool:
    """Schedule `callback(*args)` on the loop from any thread; False when the loop is closed."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        return False
    return True


class CopyProgress:
    """Call it from the copy thread as `report(done, total)` (`final=True` at the end); the progress
    callback runs on `loop`. Made on the loop's thread, before the copy starts."""

    def __init__(self, progress: Progress | None, loop: asyncio.AbstractEventLoop | None = None, *,
                 step: int = STEP, wait_s: float = WAIT_S) -> None:
        self._progress = progress
        self._loop = loop or asyncio.get_running_loop()
        self._step = step
        self._wait_s = wait_s
        self._last = -1
        self._lock = threading.Lock()
        self._latest = (0, 0)
        self._queued = False  # a call is on the loop's queue and has not run yet
        self._error: BaseException | None = None  # what a call raised, for the copy thread

    def __call__(self, done: int, total: int, *, final: bool = False) -> None:
        progress = self._progress
        if progress is None:
            return
        self._raise_error()  # a call that ran late failed: stop the copy now
        if done == self._last or (not final and done < total and done - self._last < self._step):
            return
        self._last = done
        with self._lock:
            self._latest = (min(done, total), total)
            if self._queued:
                return  # the loop is behind: its queued call will show this position
            self._queued = True
        ran = threading.Event()

        def call() -> None:
            with self._lock:
                self._queued = False
                position, size = self._latest
            try:
                progress(position, size)
            except BaseException as exc:  # noqa: BLE001 - raised again in the copy thread
                with self._lock:
                    self._error = exc
            finally:
                ran.set()

        if post(self._loop, call):
            self._wait(ran)
        self._raise_error()

    def _wait(self, ran: threading.Event) -> None:
        deadline = time.monotonic() + self._wait_s
        while not ran.wait(min(_POLL_S, max(0.0, deadline - time.monotonic()))):
            if self._loop.is_closed() or time.monotonic() >= deadline:
                return  # a closed loop never runs it; a stalled one runs it later

    def _raise_error(self) -> None:
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            raise error
