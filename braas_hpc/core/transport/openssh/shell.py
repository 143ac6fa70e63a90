"""The kept shell of the OpenSSH back end: a remote `sh` over the master, so a short command costs a
few ms, not a new `ssh` process (about 11 ms on loopback)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

from ..kept_shell import SHELL_COMMAND, KeptShell, ShellPipe


class ProcessPipe(ShellPipe):
    """The remote sh through a local `ssh` process: its stdin and stdout pipes."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self._process = process
        self._stdin = process.stdin
        self._stdout = process.stdout

    @property
    def alive(self) -> bool:
        return self._process.returncode is None

    async def write(self, data: bytes) -> None:
        self._stdin.write(data)
        await self._stdin.drain()

    async def readline(self) -> bytes:
        return await self._stdout.readline()

    async def readexactly(self, size: int) -> bytes:
        return await self._stdout.readexactly(size)

    async def abort(self) -> None:
        """Kill the client and drop what its pipe still holds (the reader stops reading when its buffer is
        full, and the process is not reaped before end of file)."""
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()
        with contextlib.suppress(Exception):
            while await asyncio.wait_for(self._stdout.read(1 << 16), 10):
                pass
        await self._process.wait()

    async def close(self) -> None:
        process = self._process
        if process.returncode is not None:
            return
        with contextlib.suppress(Exception):
            self._stdin.close()
            await asyncio.wait_for(process.wait(), 5)
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


def remote_shell(launch: Callable[[], tuple[Sequence[str], dict[str, str]]]) -> KeptShell:
    """A kept shell started by `ssh` over the master; `launch` gives its argv and environment."""

    async def open_pipe() -> ShellPipe:
        argv, env = launch()
        process = await asyncio.create_subprocess_exec(
            *argv, SHELL_COMMAND, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, env=env)
        return ProcessPipe(process)

    return KeptShell(open_pipe)
