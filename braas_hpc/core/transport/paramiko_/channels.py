"""Commands on SSH channels: both output streams read, the exit status, stdin fed, lines streamed."""

from __future__ import annotations

import asyncio
import contextlib
import select
import threading
import time
from collections.abc import Iterator

import paramiko

from ..base import StreamLine
from ..copy_progress import post

# paramiko's channel buffer drops what was read by moving the rest down (`del buf[:n]`), so a small
# read costs as much as the whole buffer: reads take all of it where they can (DRAIN), and the window
# stays at 2 MiB because SFTP reads one message at a time (a 4 MiB window halved SFTP downloads,
# 8 MiB made scp downloads with 256 KiB reads 2.5x slower).
WINDOW = 2 * 1024 * 1024
MAX_PACKET = 64 * 1024  # largest packet the server may send us: fewer, larger packets (OpenSSH: 32 KiB)
DRAIN = 2 * WINDOW  # a read size that empties the channel buffer in one go
SEND_BLOCK = 64 * 1024  # what we hand to Channel.sendall at once (it copies the rest after each packet)


def _chunks(chan: paramiko.Channel, deadline: float | None) -> Iterator[tuple[bytes, bool]]:
    """(data, is_stderr) until the server's EOF; reads both streams so neither can fill and block."""
    while True:
        eof = chan.eof_received or chan.closed  # read first: data always arrives before EOF
        if chan.recv_ready():
            yield chan.recv(DRAIN), False
        elif chan.recv_stderr_ready():
            yield chan.recv_stderr(DRAIN), True
        elif eof:
            return
        else:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                raise TimeoutError("the command did not finish in time")
            select.select([chan], [], [], wait)


def _exit_status(chan: paramiko.Channel, deadline: float | None) -> int:
    wait = None if deadline is None else max(0.0, deadline - time.monotonic())
    if not chan.status_event.wait(wait):
        raise TimeoutError("the command did not finish in time")
    if chan.exit_status == -1 and not chan.get_transport().is_active():
        raise EOFError("the connection closed before the command finished")
    return int(chan.exit_status)


def _feed(chan: paramiko.Channel, data: bytes) -> None:
    # Its own thread: a command that writes a lot before reading its input would otherwise deadlock.
    with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
        for start in range(0, len(data), SEND_BLOCK):
            chan.sendall(data[start:start + SEND_BLOCK])
        chan.shutdown_write()


def run(chan: paramiko.Channel, command: str, stdin: bytes | None, timeout: float | None
         ) -> tuple[int, bytes, bytes]:
    deadline = None if timeout is None else time.monotonic() + timeout
    chan.exec_command(command)
    if stdin:
        threading.Thread(target=_feed, args=(chan, stdin), name="braas-paramiko-stdin", daemon=True).start()
    else:
        chan.shutdown_write()
    out, err = bytearray(), bytearray()
    for data, is_err in _chunks(chan, deadline):
        (err if is_err else out).extend(data)
    status = _exit_status(chan, deadline)
    chan.close()
    return status, bytes(out), bytes(err)


def start(transport: paramiko.Transport, command: str, stdin: bool = False) -> paramiko.Channel:
    chan = transport.open_session()
    try:
        chan.exec_command(command)
        if not stdin:
            chan.shutdown_write()  # stdin is /dev/null
    except BaseException:
        chan.close()
        raise
    return chan


def send_all(chan: paramiko.Channel, data: bytes) -> None:
    """Write a stream's stdin (in a worker thread: sendall blocks while the server's window is full)."""
    if chan.closed or chan.eof_received and chan.exit_status_ready():
        raise EOFError("the command ended and reads no more input")
    for begin in range(0, len(data), SEND_BLOCK):
        chan.sendall(data[begin:begin + SEND_BLOCK])


def pump_lines(chan: paramiko.Channel, loop: asyncio.AbstractEventLoop,
                queue: asyncio.Queue[StreamLine | None], status: asyncio.Future[int]) -> None:
    """Reader thread of a stream: lines into the queue, then None, then the exit status."""

    def settle(value: int | None, error: BaseException | None) -> None:
        if status.done():
            return
        if error is not None:
            status.set_exception(error)
        else:
            status.set_result(value if value is not None else -1)

    partial = {False: b"", True: b""}

    def emit(data: bytes, is_err: bool) -> None:
        *whole, partial[is_err] = (partial[is_err] + data).split(b"\n")
        if whole:
            post(loop, _put_lines, queue, [StreamLine(w.decode(errors="replace").rstrip("\r"), is_err) for w in whole])

    try:
        for data, is_err in _chunks(chan, None):
            emit(data, is_err)
        for is_err, rest in partial.items():
            if rest:
                post(loop, _put_lines, queue, [StreamLine(rest.decode(errors="replace").rstrip("\r"), is_err)])
        post(loop, queue.put_nowait, None)
        post(loop, settle, _exit_status(chan, None), None)
    except BaseException as exc:  # noqa: BLE001 - handed to wait()
        post(loop, queue.put_nowait, None)
        post(loop, settle, None, exc)


def _put_lines(queue: asyncio.Queue[StreamLine | None], lines: list[StreamLine]) -> None:
    for line in lines:
        queue.put_nowait(line)
