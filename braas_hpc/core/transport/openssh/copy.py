"""File copies: a remote `dd` or `cat` through the master, fed or drained by a local thread.

The thread moves the bytes between a local file and ssh's pipe (splice on Linux, no copy through
Python) and reports progress through the shared copy-progress bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from ...errors import ConnectionLost, RemoteCommandError, TransferError
from ..base import Progress, remote_line, write_argv
from ..copy_progress import CopyProgress
from .connect import Connecting
from .diagnose import tail
from .process import reap

T = TypeVar("T")
COPY_BLOCK = 1 << 20
PIPE_SIZE = 1 << 20
_SPLICE = hasattr(os, "splice")
_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation

# Remote helpers, each one command line via remote_line (umask 077); the path is always "$1".
_SIZE_SCRIPT = 'if [ -e "$1" ]; then exec stat -L -c %s -- "$1"; fi; echo missing'
# The size first (one line, for progress), then the bytes from offset $2.
_READ_SCRIPT = ('stat -L -c %s -- "$1" || exit; if [ "$2" -gt 0 ]; then exec tail -c "+$(($2 + 1))" -- "$1"; fi; '
                'exec cat -- "$1"')


def _pipe() -> tuple[int, int]:
    reader, writer = os.pipe()
    with contextlib.suppress(AttributeError, OSError):
        import fcntl  # Linux: a bigger pipe means fewer wake-ups per MB

        fcntl.fcntl(writer, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    return reader, writer


def _move(source: int, target: int, splice: bool) -> tuple[int, bool]:
    """Up to COPY_BLOCK bytes from one descriptor to another: splice (Linux, no copy through Python),
    else read/write. Returns (bytes moved, whether splice still works); 0 bytes means end of input."""
    if splice:
        try:
            return os.splice(source, target, COPY_BLOCK), True
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
    data = os.read(source, COPY_BLOCK)
    view = memoryview(data)
    while view:
        view = view[os.write(target, view):]
    return len(data), False


def _copy(source: int, target: int, position: int, total: int, report: CopyProgress) -> int:
    """Move bytes until end of file, reporting progress (splice where the OS has it). Returns the
    position reached."""
    splice = _SPLICE
    while True:
        count, splice = _move(source, target, splice)
        if not count:
            break
        position += count
        report(position, total)
    report(position, total, final=True)
    return position


def _file_to_pipe(local: Path, offset: int, pipe: int, report: CopyProgress, total: int) -> None:
    """Thread: local[offset:] into ssh's stdin. Owns `pipe` and closes it (end of file for the remote)."""
    try:
        source = os.open(local, os.O_RDONLY | _O_BINARY)
        try:
            os.lseek(source, offset, os.SEEK_SET)
            _copy(source, pipe, offset, total, report)
        finally:
            os.close(source)
    except BrokenPipeError:
        pass  # ssh ended early: its exit status says why
    finally:
        os.close(pipe)


def _pipe_to_file(pipe: int, local: Path, offset: int, report: CopyProgress) -> tuple[int, int] | None:
    """Thread: read the size line, then write the rest into local at offset. Owns and closes `pipe`.

    Returns the remote file's size and the position the local file reached, or None when no size came
    (the remote command failed).
    """
    try:
        header = b""
        while not header.endswith(b"\n") and len(header) < 24:
            byte = os.read(pipe, 1)  # byte by byte: the file's data follows at once
            if not byte:
                break
            header += byte
        if not header.strip().isdigit():
            return None
        total = int(header)
        target = os.open(local, os.O_WRONLY | os.O_CREAT | _O_BINARY, 0o666)
        try:
            os.ftruncate(target, offset)
            os.lseek(target, offset, os.SEEK_SET)
            return total, _copy(pipe, target, offset, total, report)
        finally:
            os.close(target)
    finally:
        os.close(pipe)


class Copies(Connecting):
    """_size, _send and _receive: the transfer primitives base.Transport builds put/get on."""

    async def _size(self, remote: str) -> int | None:
        status, out, err = await self._exec(remote_line(["sh", "-c", _SIZE_SCRIPT, "sh", remote]), None, 120)
        text = out.decode(errors="replace").strip()
        if status == 0 and text == "missing":
            return None
        if status == 0 and re.fullmatch(r"[0-9]+", text):
            return int(text)
        raise RemoteCommandError(f"stat -- {remote}", status, text, err.decode(errors="replace"))

    async def _send(self, local: Path, remote: str, offset: int, progress: Progress | None) -> None:
        total = local.stat().st_size
        command = remote_line(write_argv(remote, offset))
        await self.connect()
        report = CopyProgress(progress)
        process, writer = await self._ssh_on_pipe(command, upload=True)
        copy = asyncio.to_thread(_file_to_pipe, local, offset, writer, report, total)
        await self._transfer(process, copy, f"upload of {local} to {remote}")

    async def _receive(self, remote: str, local: Path, offset: int, progress: Progress | None) -> None:
        command = remote_line(["sh", "-c", _READ_SCRIPT, "sh", remote, str(offset)])
        await self.connect()
        report = CopyProgress(progress)
        process, reader = await self._ssh_on_pipe(command, upload=False)
        copy = asyncio.to_thread(_pipe_to_file, reader, local, offset, report)
        sizes = await self._transfer(process, copy, f"download of {remote} to {local}")
        if sizes is None:
            raise TransferError(f"download of {remote} to {local} failed: the remote side sent no size")
        total, reached = sizes
        if reached < total:
            await self._short_read(remote, reached, total)

    async def _ssh_on_pipe(self, command: str, *, upload: bool) -> tuple[asyncio.subprocess.Process, int]:
        """ssh running `command` with one end of a new pipe as its stdin (upload) or its stdout (download).
        Returns ssh and the other end, which the copy thread owns (and closes) from here."""
        reader, writer = _pipe()
        theirs, ours = (reader, writer) if upload else (writer, reader)
        quiet = asyncio.subprocess.DEVNULL
        try:
            process = await asyncio.create_subprocess_exec(
                *self._client_argv(), command, stdin=theirs if upload else quiet, stdout=quiet if upload else theirs,
                stderr=asyncio.subprocess.PIPE, env=self._env())
        except BaseException:
            os.close(ours)
            raise
        finally:
            os.close(theirs)  # ssh has its own copy
        return process, ours

    async def _short_read(self, remote: str, reached: int, total: int) -> None:
        """The output ended before the size announced. Through a master, ssh passes on the command's exit
        status as soon as the server sends it, which can be before the last of its output: when the
        connection then drops, ssh exits 0 with the tail missing. A dead master says it was that."""
        if self._mux and not await self._master_alive():
            self._up = False  # the next call reconnects
            raise ConnectionLost(f"the connection to {self.target.host} dropped during the download of {remote} "
                                 f"(at byte {reached} of {total})")
        raise TransferError(f"download of {remote} ended at byte {reached} of {total}: the file shrank on the "
                            "cluster while it was read")

    async def _transfer(self, process: asyncio.subprocess.Process, copy: Coroutine[Any, Any, T], what: str) -> T:
        """Wait for a copy thread and its ssh; map ssh's failure. Cancelling ends ssh, which ends the thread."""
        assert process.stderr is not None
        errors = asyncio.create_task(process.stderr.read())
        task = asyncio.ensure_future(copy)
        try:
            result = await task  # all bytes moved, or the pipe broke because ssh ended
            status = await process.wait()
            stderr = await errors
        except BaseException:
            errors.cancel()
            task.add_done_callback(lambda done: done.cancelled() or done.exception())  # no "never retrieved"
            await reap(process)
            raise
        if status == 255:
            await self._failed(stderr)
        if status != 0:
            raise TransferError(f"{what} failed:\n{tail(stderr.decode(errors='replace'))}")
        return result
