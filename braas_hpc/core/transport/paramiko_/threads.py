"""Blocking paramiko calls on threads of their own, awaited from the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ..copy_progress import post

T = TypeVar("T")


def in_thread(fn: Callable[..., T], *args: Any, orphan: Callable[[T], object] | None = None) -> asyncio.Future[T]:
    """Run a blocking call on its own daemon thread and await its result.

    Not asyncio.to_thread: the default executor has min(32, cpus + 4) workers, which long reads
    (streams, tunnels, long commands) would use up, and asyncio.run() joins them at exit, so a hung
    channel would hang the program. `orphan` releases a result nobody awaits any more (cancelled).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.cancelled():
            if error is None and orphan is not None:
                orphan(result)
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            post(loop, settle, None, exc)
        else:
            if not post(loop, settle, result, None) and orphan is not None:
                orphan(result)

    threading.Thread(target=work, name="braas-paramiko", daemon=True).start()
    return future


def close_quietly(*things: Any) -> None:
    for thing in things:
        with contextlib.suppress(Exception):
            thing.close()


def close_later(things: Sequence[Any]) -> None:
    """Close off the event loop: closing a paramiko Transport joins its thread."""
    if things:
        threading.Thread(target=close_quietly, args=tuple(things), name="braas-paramiko-close", daemon=True).start()
