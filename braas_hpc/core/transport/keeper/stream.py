"""A command's stream through the keeper, its lines read and (with stdin) its input written.

Once the keeper says the stream is `opened`, one reader task takes every message of the request: lines
and the end go to `lines`, acknowledgements of written input to `write`. Input crosses in frames (a JSON
header `{"write": n}`, then n raw bytes); the keeper answers each with `wrote` once its real transport
took the bytes, so at most WINDOW bytes are ever in the keeper's hands and a write returns, as on a
direct connection, once the channel took them. A multi-GB stream is never held whole on either side.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from ...errors import ConnectionLost
from ..base import StreamHandle, StreamLine
from . import wire
from .link import KeeperGone, KeeperMismatch, Request

FRAME = 1024 * 1024  # input bytes a frame carries at most
WINDOW = 2 * 1024 * 1024  # input sent but not yet taken by the keeper's transport


class KeptStream:
    """The client side of one `stream` request, after the keeper opened it."""

    def __init__(self, request: Request, host: str, keeper_failed: Callable[[BaseException], object]) -> None:
        self._request = request
        self._host = host
        self._keeper_failed = keeper_failed
        self._lines: asyncio.Queue[StreamLine | BaseException | None] = asyncio.Queue()
        self._changed = asyncio.Condition()
        self._sent = 0
        self._taken = 0
        self._input_closed = False
        self._write_error: dict[str, Any] | None = None
        self._ended = False
        self._keeper_lost = ""  # why the keeper stopped serving this stream, when it did
        self._status: int | None = None
        self._reader = asyncio.create_task(self._read())

    def handle(self, stdin: bool) -> StreamHandle:
        if not stdin:
            return StreamHandle(self._iterate(), self._wait, self._close)
        return StreamHandle(self._iterate(), self._wait, self._close, self._write, self._write_eof)

    # ---- what the keeper sends -------------------------------------------------------------------

    async def _read(self) -> None:
        end: BaseException | None = None
        try:
            while True:
                message = await self._request.next()
                if "line" in message:
                    self._lines.put_nowait(StreamLine(str(message["line"]), bool(message.get("stderr"))))
                elif "ok" in message:
                    self._status = message["ok"].get("status")
                    return
                else:
                    await self._acknowledged(message)
        except (KeeperGone, KeeperMismatch) as exc:
            self._keeper_failed(exc)
            self._keeper_lost = f"the connection keeper stopped serving the command on {self._host}"
            end = ConnectionLost(self._keeper_lost)
            end.__cause__ = exc
        except Exception as exc:  # noqa: BLE001 - a typed error of the stream (wire.decode_error): the reader raises it
            end = exc
        finally:
            self._lines.put_nowait(end)
            async with self._changed:
                self._ended = True
                self._changed.notify_all()

    async def _acknowledged(self, message: dict[str, Any]) -> None:
        async with self._changed:
            if "wrote" in message:
                self._taken += int(message["wrote"])
            elif "input_closed" in message:
                self._input_closed = True
            elif "write_error" in message:
                self._write_error = dict(message["write_error"])
            else:
                raise KeeperGone(f"unexpected keeper message: {sorted(message)}")
            self._changed.notify_all()

    # ---- the StreamHandle ------------------------------------------------------------------------

    async def _iterate(self) -> AsyncIterator[StreamLine]:
        while True:
            item = await self._lines.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def _wait(self) -> int | None:
        return self._status

    async def _close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        self._request.close()

    def _stopped_reading(self) -> BaseException:
        if self._write_error is not None:
            return wire.decode_error(self._write_error)
        if self._keeper_lost:
            return ConnectionLost(self._keeper_lost)
        return ConnectionLost(f"the command on {self._host} stopped reading its input")

    async def _until(self, ready: Callable[[], bool]) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: ready() or self._write_error is not None or self._ended)

    def _room_for(self, size: int) -> Callable[[], bool]:
        return lambda: self._sent - self._taken + size <= WINDOW

    async def _write(self, data: bytes) -> None:
        view = memoryview(data)
        for begin in range(0, len(view), FRAME):
            frame = view[begin:begin + FRAME]
            await self._until(self._room_for(len(frame)))
            if self._write_error is not None or self._ended:
                raise self._stopped_reading()
            writer = self._request.writer
            try:
                writer.write(wire.json_line({"write": len(frame)}))
                writer.write(frame)
                self._sent += len(frame)
                await writer.drain()
            except OSError as exc:
                raise ConnectionLost(self._keeper_lost or f"the connection keeper stopped serving the command on "
                                     f"{self._host}") from exc
        await self._until(lambda: self._taken >= self._sent)
        if self._taken < self._sent:
            raise self._stopped_reading()

    async def _write_eof(self) -> None:
        if self._ended or self._write_error is not None or self._input_closed:
            return  # as on a direct connection: the end of a stream nobody reads any more is no error
        with contextlib.suppress(OSError):
            await wire.send(self._request.writer, {"write_eof": True})
            await self._until(lambda: self._input_closed)
