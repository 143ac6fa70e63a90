"""An add-on's asyncio loop, in a background thread (no bpy here).

Blender's main thread hands the loop coroutine factories and gets back an `Operation` it can poll from
a timer (progress, result) and cancel. Every connection lives on this loop, so a passphrase or one-time
code is asked once per cluster for the whole Blender session. Nothing in this module touches `bpy`:
the loop thread never may, and the module is tested without Blender.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..core import progress
from ..core.transport import pool

_ids = itertools.count(1)


@dataclass(frozen=True)
class Snapshot:
    """What the status line shows, copied under a lock so the main thread never sees half an update."""

    label: str
    stage: str
    done: int
    total: int
    started: float

    @property
    def fraction(self) -> float | None:
        return min(1.0, self.done / self.total) if self.total > 0 else None


class Operation:
    """One piece of background work: a label, live progress, a result or an error, a cancel."""

    def __init__(self, label: str, kind: str = "") -> None:
        self.id = next(_ids)
        self.label = label
        self.kind = kind  # lets the UI run one refresh at a time, and so on
        self.started = time.monotonic()
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.on_done: Callable[[Operation], None] | None = None  # called on the main thread by the pump
        self._lock = threading.Lock()
        self._stage, self._done, self._total = "starting", 0, 0

    def update(self, stage: str, done: int = 0, total: int = 0) -> None:  # the loop thread
        with self._lock:
            self._stage, self._done, self._total = stage, done, total

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(self.label, self._stage, self._done, self._total, self.started)

    @property
    def finished(self) -> bool:
        return self.future.done()

    @property
    def cancelled(self) -> bool:
        return self.future.cancelled()

    def error(self) -> BaseException | None:
        if not self.future.done() or self.future.cancelled():
            return None
        return self.future.exception()

    def result(self, timeout: float | None = None) -> Any:
        return self.future.result(timeout)

    def cancel(self) -> bool:
        """Stops the work where it is: the task gets CancelledError at its next await (a transfer's next
        chunk, a remote command's answer), connections stay usable for the next operation."""
        return self.future.cancel()


class Bridge:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._operations: list[Operation] = []
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="braas-hpc-loop", daemon=True)
        self._thread.start()

    def run(self, label: str, factory: Callable[[], Awaitable[Any]], kind: str = "",
            on_done: Callable[[Operation], None] | None = None) -> Operation:
        """Start `factory()` on the loop; returns at once (the main thread never waits for the network)."""
        self.start()
        assert self._loop is not None
        operation = Operation(label, kind)
        operation.on_done = on_done

        async def wrapped() -> Any:
            with progress.listening(operation.update):
                return await factory()

        operation.future = asyncio.run_coroutine_threadsafe(wrapped(), self._loop)
        with self._lock:
            self._operations.append(operation)
        return operation

    def operations(self) -> list[Operation]:
        with self._lock:
            return list(self._operations)

    def active(self, kind: str = "") -> list[Operation]:
        return [op for op in self.operations() if not op.finished and (not kind or op.kind == kind)]

    def take_finished(self) -> list[Operation]:
        """Finished operations, each handed out once (to the main thread's pump)."""
        with self._lock:
            done = [op for op in self._operations if op.finished]
            self._operations = [op for op in self._operations if not op.finished]
        return done

    def cancel_all(self) -> int:
        return sum(1 for op in self.operations() if op.cancel())

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel everything, close every connection of the loop, end the thread (add-on unregister)."""
        if not self.running or self._loop is None:
            return
        self.cancel_all()
        loop = self._loop
        closing = asyncio.run_coroutine_threadsafe(pool.close_all(), loop)
        try:
            closing.result(timeout)
        except (concurrent.futures.TimeoutError, OSError, RuntimeError):
            pass  # a hung connection must not keep Blender from disabling the add-on
        loop.call_soon_threadsafe(loop.stop)
        assert self._thread is not None
        self._thread.join(timeout)
        if not self._thread.is_alive():
            loop.close()
        self._thread = None
        self._loop = None
        with self._lock:
            self._operations.clear()
