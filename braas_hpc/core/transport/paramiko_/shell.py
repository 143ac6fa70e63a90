"""The kept remote shell of the paramiko back end: one session channel for short commands, driven
from the event loop (a reader thread feeds its stdout into an asyncio stream; writes run on threads)."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import paramiko

from ..copy_progress import post
from ..kept_shell import SHELL_COMMAND, ShellPipe
from .channels import DRAIN, send_all
from .threads import close_later, in_thread

READER_LIMIT = 1 << 16  # the longest line read (a login script's output, before our ready line)


def _pump(chan: paramiko.Channel, loop: asyncio.AbstractEventLoop, reader: asyncio.StreamReader) -> None:
    """Reader thread: the channel's stdout into the stream, then end of file (stderr is not read: the
    kept shell sends its commands' stderr through stdout, and sh itself says nothing there)."""
    try:
        while data := chan.recv(DRAIN):
            post(loop, reader.feed_data, data)
    except (OSError, EOFError, paramiko.SSHException) as exc:
        post(loop, reader.set_exception, ConnectionResetError(str(exc) or type(exc).__name__))
        return
    post(loop, reader.feed_eof)


class ChannelPipe(ShellPipe):
    def __init__(self, chan: paramiko.Channel, loop: asyncio.AbstractEventLoop) -> None:
        self._chan = chan
        self._reader = asyncio.StreamReader(limit=READER_LIMIT, loop=loop)
        threading.Thread(target=_pump, args=(chan, loop, self._reader), name="braas-paramiko-shell",
                         daemon=True).start()

    @property
    def alive(self) -> bool:
        return not (self._chan.closed or self._chan.eof_received) and self._chan.get_transport().is_active()

    async def write(self, data: bytes) -> None:
        try:
            await in_thread(send_all, self._chan, data)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise ConnectionResetError(str(exc) or type(exc).__name__) from exc

    async def readline(self) -> bytes:
        return await self._reader.readline()

    async def readexactly(self, size: int) -> bytes:
        return await self._reader.readexactly(size)

    async def abort(self) -> None:
        close_later([self._chan])  # closing joins nothing, but may block on the transport's lock

    async def close(self) -> None:
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            await in_thread(self._chan.shutdown_write)
        with contextlib.suppress(TimeoutError, ConnectionError, ValueError):
            async with asyncio.timeout(5):
                while await self._reader.read(1 << 16):
                    pass
        close_later([self._chan])


def open_shell(transport: paramiko.Transport) -> paramiko.Channel:
    """The session channel with the remote sh, its stdin kept open (on a worker thread)."""
    chan = transport.open_session()
    try:
        chan.exec_command(SHELL_COMMAND)
    except BaseException:
        chan.close()
        raise
    return chan
