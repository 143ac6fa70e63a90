"""The paramiko Transport: its parts put together, and commands, streams and listings on channels."""

from __future__ import annotations

import asyncio
import contextlib
import stat
import threading
from collections.abc import AsyncIterator

import paramiko

from ...errors import ConnectionLost
from ..base import HOLD_COMMAND, Release, RemoteEntry, StreamHandle, StreamLine
from ..kept_shell import KeptShell, SessionLost, ShellPipe, run_kept
from .channels import pump_lines, run, send_all, start
from .copy import Copies
from .forward import Forwards
from .shell import ChannelPipe, open_shell
from .threads import close_later, close_quietly, in_thread


class ParamikoTransport(Copies, Forwards):
    name = "paramiko"

    async def _open_shell(self) -> ShellPipe:
        hops = await self._connection()
        with self._mapped(hops):
            chan = await in_thread(open_shell, hops[-1], orphan=close_quietly)
        return ChannelPipe(chan, asyncio.get_running_loop())

    async def _connection_gone(self, lost: SessionLost) -> Exception | None:
        hops = self._hops
        return None if self._alive() else self._lost(lost, hops)

    def _kept_shell(self) -> KeptShell | None:
        return self._shell

    async def _exec(self, command: str, stdin: bytes | None, timeout: float | None
                    ) -> tuple[int | None, bytes, bytes]:
        if (done := await run_kept(self._shell, command, stdin, timeout, self.connect,
                                   self._connection_gone)) is not None:
            return done
        hops = await self._connection()
        with self._mapped(hops):
            chan = await in_thread(hops[-1].open_session, orphan=close_quietly)
            try:
                return await in_thread(run, chan, command, stdin, timeout)
            except BaseException:
                close_later([chan])  # ends the thread too (timeout, cancel, error)
                raise

    async def _open_stream(self, command: str, stdin: bool = False) -> StreamHandle:
        hops = await self._connection()
        with self._mapped(hops):
            chan = await in_thread(start, hops[-1], command, stdin, orphan=close_quietly)
        self._channels.add(chan)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[StreamLine | None] = asyncio.Queue()
        status: asyncio.Future[int] = loop.create_future()
        # Read the outcome even when nobody waits (a cancelled stream): no "never retrieved" warning.
        status.add_done_callback(lambda f: f.cancelled() or f.exception())
        threading.Thread(target=pump_lines, args=(chan, loop, queue, status), name="braas-paramiko-stream",
                         daemon=True).start()

        async def lines() -> AsyncIterator[StreamLine]:
            while (item := await queue.get()) is not None:
                yield item

        async def wait() -> int | None:
            with self._mapped(hops):
                return await status

        async def close() -> None:
            self._channels.discard(chan)
            close_later([chan])

        async def write(data: bytes) -> None:
            with self._mapped(hops):
                try:
                    await in_thread(send_all, chan, data)
                except (OSError, EOFError) as exc:
                    raise ConnectionLost(f"the command on {self.target.host} stopped reading its input") from exc

        async def write_eof() -> None:
            with contextlib.suppress(OSError, EOFError):
                await in_thread(chan.shutdown_write)

        if not stdin:
            return StreamHandle(lines(), wait, close)
        return StreamHandle(lines(), wait, close, write, write_eof)

    async def listdir(self, remote: str) -> list[RemoteEntry]:
        async with self._sftp() as sftp:
            try:
                entries = await in_thread(sftp.client.listdir_attr, remote)
            except FileNotFoundError:
                return []
        return [
            RemoteEntry(e.filename, e.st_size or 0, stat.S_ISDIR(e.st_mode))
            for e in entries
            if e.filename not in (".", "..") and e.st_mode is not None
            and (stat.S_ISREG(e.st_mode) or stat.S_ISDIR(e.st_mode))
        ]

    async def hold_interactive(self) -> Release | None:
        hops = await self._connection()

        def open_session() -> paramiko.Channel:
            channel = hops[-1].open_session(timeout=self.target.connect_timeout)
            channel.get_pty(term="dumb")
            channel.exec_command(HOLD_COMMAND)
            return channel

        with self._mapped(hops):
            channel = await in_thread(open_session, orphan=close_quietly)

        async def release() -> None:
            await in_thread(close_quietly, channel)

        return release
