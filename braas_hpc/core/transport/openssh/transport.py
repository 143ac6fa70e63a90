"""The OpenSSH Transport: its parts put together, and the commands, streams and listings over the master."""

from __future__ import annotations

import asyncio
import contextlib

from ...errors import ConnectionLost, RemoteCommandError
from ..base import HOLD_COMMAND, Release, RemoteEntry, StreamHandle, merge_lines, pipe_writer, remote_line
from ..kept_shell import KeptShell, SessionLost, run_kept
from .copy import Copies
from .forward import Forwards
from .options import opt
from .process import reap

STREAM_LINE_LIMIT = 8 << 20
_LIST_SCRIPT = '[ -e "$1" ] || exit 0; exec find -H "$@"'
_LIST_EXPR = ["-mindepth", "1", "-maxdepth", "1", "(", "-type", "f", "-o", "-type", "d", ")", "-printf", "%y %s %f\\0"]


class OpenSSHTransport(Copies, Forwards):
    name = "openssh"

    def _kept_shell(self) -> KeptShell | None:
        return self._shell if self._mux else None

    async def _exec(self, command: str, stdin: bytes | None, timeout: float | None
                    ) -> tuple[int | None, bytes, bytes]:
        if self._mux and (done := await run_kept(self._shell, command, stdin, timeout, self.connect,
                                                 self._master_gone)) is not None:
            return done
        for attempt in range(2):
            await self.connect()
            status, out, err = await self._run_client(command, stdin, timeout)
            if status == 255 and self._not_started(err) and attempt == 0:
                self._up = False  # the master ended (idle timeout, drop) before the command started: retry once
                continue
            if status == 255:
                await self._failed(err)
            return status, out, err
        raise AssertionError("unreachable")

    async def _master_gone(self, _lost: SessionLost) -> Exception | None:
        if await self._master_alive():
            return None  # only the shell ended: the command is run as a call of its own
        self._up = False
        return ConnectionLost(f"the connection to {self.target.host} dropped")

    async def _open_stream(self, command: str, stdin: bool = False) -> StreamHandle:
        await self.connect()
        process = await asyncio.create_subprocess_exec(
            *self._client_argv(), command, stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=self._env(), limit=STREAM_LINE_LIMIT)
        errors: list[str] = []
        assert process.stdout is not None and process.stderr is not None
        lines, stop = merge_lines(process.stdout, process.stderr,
                                  lambda line: errors.append(line.text) if line.stderr else None)

        async def wait() -> int | None:
            status = await process.wait()
            if status == 255:
                await self._failed("\n".join(errors[-10:]))
            return status

        async def close() -> None:
            stop()
            await reap(process)  # ends the local ssh; the master then closes the session

        if not stdin:
            return StreamHandle(lines, wait, close)
        write, write_eof = pipe_writer(process, f"the connection to {self.target.host} dropped")
        return StreamHandle(lines, wait, close, write, write_eof)

    async def listdir(self, remote: str) -> list[RemoteEntry]:
        path = remote if remote.startswith("/") else f"./{remote}"  # find reads "-x" or "!" as an expression
        status, out, err = await self._exec(remote_line(["sh", "-c", _LIST_SCRIPT, "sh", path, *_LIST_EXPR]),
                                            None, 300)
        if status != 0:
            raise RemoteCommandError(f"find {remote}", status, "", err.decode(errors="replace"))
        entries = []
        for record in out.split(b"\0"):
            kind, _, rest = record.partition(b" ")
            size, _, name = rest.partition(b" ")
            if kind in (b"f", b"d") and size.isdigit() and name:
                # surrogateescape: a name that is not UTF-8 still round-trips into later commands
                entries.append(RemoteEntry(name.decode("utf-8", "surrogateescape"), int(size), kind == b"d"))
        return entries

    async def hold_interactive(self) -> Release | None:
        if not self._mux:
            return None  # each call is a connection of its own: nothing to hold on the tunnel's one
        await self.connect()
        argv = self._client_argv(session=False)
        argv[-2:-2] = [*opt("ClearAllForwardings", "yes"), *opt("RemoteCommand", "none"), "-tt"]
        process = await asyncio.create_subprocess_exec(
            *argv, HOLD_COMMAND, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, env=self._env(), start_new_session=True)

        async def release() -> None:
            if process.returncode is None:
                process.terminate()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), timeout=5)

        return release
