"""Progress of the running operation, for whoever shows it (the add-on's status line, a CLI bar).

The listener lives in a context variable: each asyncio task (one operation of the add-on's loop) sees
its own, so deep code such as the store's upload reports without every signature carrying a callback,
and two operations running at once never mix their figures. Without a listener, reporting costs a lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

Listener = Callable[[str, int, int], None]  # (stage, done, total); total 0: no measure of the stage
_listener: ContextVar[Listener | None] = ContextVar("braas_hpc_progress", default=None)


def report(stage: str, done: int = 0, total: int = 0) -> None:
    listener = _listener.get()
    if listener is not None:
        listener(stage, done, total)


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


class ByteCounter:
    """Sums the byte progress of several transfers running at once into one figure for `stage`."""

    def __init__(self, stage: str, total: int) -> None:
        self.stage = stage
        self.total = total
        self._done: dict[object, int] = {}

    def for_item(self, key: object) -> Callable[[int, int], None]:
        def update(done: int, _total: int) -> None:
            self._done[key] = done
            report(self.stage, sum(self._done.values()), self.total)
        return update
