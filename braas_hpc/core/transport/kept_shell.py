"""A long-lived remote `sh` on an open connection, so a short command costs one round trip: no new
session channel (asyncssh, paramiko) and no new `ssh` process (OpenSSH) per command.

Any back end can keep one: it gives a ShellPipe, a byte stream to and from a remote `sh` it started.
One request at a time: the command runs in a subshell (so `cd`, `exit` or exports never touch the
session), with stdin from /dev/null and its output in two temporary files on the cluster; then a
header line with a random token, the exit status and both sizes, then both outputs. A command with a
small, whole stdin (a request of a few kilobytes) gets it through the session too: sent as base64 in a
here-document, decoded into a third private temp file and read from there, so the command sees exactly
those bytes and then the end. Commands with more input, input streamed while they run, or arriving
while the session is busy, use a call of their own instead.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable

from ..errors import AnswerTooLarge

# The most one answer (stdout and stderr) may hold: the sizes come from the other end, and what they
# announce is read into memory. Listings of a few hundred thousand frames fit many times over.
ANSWER_BYTES = 256 * 1024 * 1024
START_TIMEOUT = 30.0  # for the shell's ready line (a login script may be slow)
STALL_TIMEOUT = 300.0  # the longest wait for the next bytes of a file stream
FILE_BLOCK = 1 << 20
# The most stdin a command may bring through the session (base64 in the request): more goes on a call of its own.
STDIN_BYTES = 256 * 1024

# Whole files one after another on the session's stdout ($@: their paths): per file "F <size>" and its bytes,
# or "M" when it is not a readable regular file. The size is that of the file opened (fd 3), so a frame
# renamed over meanwhile is sent whole, old or new.
SEND_FILES = ('for f; do if [ -f "$f" ] && { s=$(stat -L -c %s /dev/fd/3) && printf \'F %s\\n\' "$s" && '
              'head -c "$s" <&3; } 3<"$f"; then :; else printf \'M\\n\'; fi; done')
SHELL_COMMAND = "exec sh"

# Set up once: two private temp files, removed when the session ends.
_SETUP = ('umask 077; O=$(mktemp) && E=$(mktemp) && I=$(mktemp) || exit 1; '
          'trap \'rm -f "$O" "$E" "$I"\' EXIT HUP TERM\n')


class SessionLost(Exception):
    """The session ended. `sent`: the command had been sent, so whether it ran is unknown."""

    def __init__(self, message: str, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class NoStdinHere(Exception):
    """The session could not decode a command's stdin (no `base64` there): the command did not run."""


class ShellPipe(ABC):
    """The remote `sh` (started with SHELL_COMMAND) as bytes: its stdin written, its stdout read.

    A broken stream raises ConnectionError; readexactly raises asyncio.IncompleteReadError at end of
    file, readline returns what came before it (b"" when nothing did)."""

    @property
    @abstractmethod
    def alive(self) -> bool: ...

    @abstractmethod
    async def write(self, data: bytes) -> None: ...

    @abstractmethod
    async def readline(self) -> bytes: ...

    @abstractmethod
    async def readexactly(self, size: int) -> bytes: ...

    @abstractmethod
    async def close(self) -> None:
        """End the session: its stdin closed, a few seconds for the shell to leave, then cut."""

    @abstractmethod
    async def abort(self) -> None:
        """End the session now, dropping what it still sends."""


class KeptShell:
    def __init__(self, open_pipe: Callable[[], Awaitable[ShellPipe]]) -> None:
        self._open_pipe = open_pipe  # starts the remote sh on the current connection
        self._pipe: ShellPipe | None = None
        self._token = f"braas-end-{secrets.token_hex(8)}"
        self.lock = asyncio.Lock()
        self.starts = 0  # sessions started, for tests and benchmarks
        self.takes_stdin = True  # until a session could not decode one

    @property
    def alive(self) -> bool:
        return self._pipe is not None and self._pipe.alive

    async def _start(self) -> ShellPipe:
        try:
            pipe = await self._open_pipe()
        except Exception as exc:  # noqa: BLE001 - the normal call that follows reports the real error
            raise SessionLost(f"the remote shell did not start: {exc}", sent=False) from exc
        self.starts += 1
        ready = f"{self._token} ready"
        try:
            await pipe.write(f"{_SETUP}printf '%s\\n' '{ready}'\n".encode())
            # A login script may print before our shell starts: skip to the ready line.
            async with asyncio.timeout(START_TIMEOUT):
                while True:
                    line = await pipe.readline()
                    if not line:
                        raise ConnectionResetError("the remote shell ended")
                    if line.decode(errors="replace").strip() == ready:
                        return pipe
        except (TimeoutError, ConnectionError, ValueError) as exc:  # ValueError: a line over the reader's limit
            await pipe.abort()
            raise SessionLost("the remote shell did not start", sent=False) from exc
        except BaseException:
            await pipe.abort()
            raise

    def _request(self, command: str, stdin: bytes | None) -> str:
        answer = (f'printf \'%s %s %s %s\\n\' {self._token} "$s" "$(wc -c <"$O")" "$(wc -c <"$E")"; '
                  'cat "$O" "$E"\n')
        if stdin is None:
            return f'({command}\n) </dev/null >"$O" 2>"$E"; s=$?; {answer}'
        # The end word holds the token: no line of base64 can be it. A failed decode runs nothing ("x").
        end = f"{self._token}-in"
        return (f"base64 -d >\"$I\" 2>/dev/null <<'{end}'\n{base64.encodebytes(stdin).decode()}{end}\n"
                f'if [ $? = 0 ]; then ({command}\n) <"$I" >"$O" 2>"$E"; s=$?; else s=x; : >"$O"; : >"$E"; fi; '
                f': >"$I"; {answer}')

    async def run(self, command: str, timeout: float | None, stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
        """Run one command line (with `stdin`: at most STDIN_BYTES, given whole); the caller holds `lock`.
        Raises NoStdinHere when the session cannot decode stdin (the command did not run)."""
        if not self.alive:
            self.forget()
            self._pipe = await self._start()
        pipe = self._pipe
        assert pipe is not None
        request = self._request(command, stdin)
        try:
            await pipe.write(request.encode())
            header = await asyncio.wait_for(self._header(pipe), timeout)
            if header[1:4] == ["x", "0", "0"] and stdin is not None:
                undecoded = True  # nothing follows this header: the session stays usable
            else:
                undecoded = False
                status, out_size, err_size = (int(field) for field in header[1:4])
                if out_size + err_size > ANSWER_BYTES:
                    await self._abort()
                    raise AnswerTooLarge(f"the answer to `{command[:200]}` holds {out_size + err_size} bytes, more "
                                         f"than the {ANSWER_BYTES} bytes braas-hpc reads from one command; nothing "
                                         "of it was kept")
                out = await pipe.readexactly(out_size)
                err = await pipe.readexactly(err_size)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
            await self._abort()
            raise SessionLost(str(exc), sent=True) from exc
        except BaseException:  # a time-out or a cancel leaves the stream mid-answer: killed, a new one next time
            await self._abort()
            raise
        if undecoded:
            self.takes_stdin = False
            raise NoStdinHere("the remote shell cannot decode base64")
        return status, out, err

    async def send_files(self, command: str, count: int,
                         on_file: Callable[[int, int | None, AsyncIterator[bytes]], Awaitable[None]]) -> None:
        """Run `command` (SEND_FILES for `count` paths, quoted by the caller) with its output straight on the
        session, and hand each file to `on_file(index, size or None when missing, its bytes)`, which reads
        them all. The caller holds `lock`. A session lost midway raises SessionLost (sent)."""
        if not self.alive:
            self.forget()
            self._pipe = await self._start()
        pipe = self._pipe
        assert pipe is not None
        try:
            await pipe.write(f'({command}\n) </dev/null 2>/dev/null; printf \'%s %s\\n\' {self._token} "$?"\n'.encode())
            for index in range(count):
                async with asyncio.timeout(STALL_TIMEOUT):
                    line = await pipe.readline()
                kind, _, size = line.decode(errors="replace").strip().partition(" ")
                if kind == "M" and not size:
                    await on_file(index, None, _no_bytes())
                elif kind == "F" and size.isdigit():
                    await on_file(index, int(size), _bytes_of(pipe, int(size)))
                else:
                    raise ValueError(f"unexpected answer from the remote shell: {line[:80]!r}")
            async with asyncio.timeout(STALL_TIMEOUT):
                end = (await pipe.readline()).split()
            if len(end) != 2 or end[0] != self._token.encode():
                raise ValueError(f"unexpected end of a file stream from the remote shell: {end[:2]!r}")
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, TimeoutError) as exc:
            await self._abort()
            raise SessionLost(str(exc) or type(exc).__name__, sent=True) from exc
        except BaseException:  # cancelled, or the local disk refused: the stream is mid-file
            await self._abort()
            raise

    async def _header(self, pipe: ShellPipe) -> list[str]:
        line = await pipe.readline()
        fields = line.decode(errors="replace").split()
        if len(fields) != 4 or fields[0] != self._token:
            raise ValueError(f"unexpected answer from the remote shell: {line[:80]!r}")
        return fields

    async def _abort(self) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            await asyncio.shield(pipe.abort())

    def forget(self) -> None:
        """Drop the session without a word (its connection is being closed or is gone)."""
        self._pipe = None

    async def close(self) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            await pipe.close()


async def _no_bytes() -> AsyncIterator[bytes]:
    return
    yield


async def _bytes_of(pipe: ShellPipe, size: int) -> AsyncIterator[bytes]:
    left = size
    while left:
        async with asyncio.timeout(STALL_TIMEOUT):
            chunk = await pipe.readexactly(min(left, FILE_BLOCK))
        left -= len(chunk)
        yield chunk


async def run_kept(shell: KeptShell, command: str, stdin: bytes | None, timeout: float | None,
                   connect: Callable[[], Awaitable[None]],
                   connection_gone: Callable[[SessionLost], Awaitable[Exception | None]]
                   ) -> tuple[int, bytes, bytes] | None:
    """A command through the kept shell when it can go there (no stdin or a small one, the shell not
    busy); None when the caller should make a call of its own (also when the session ended before the
    command was sent, or after it was sent with the connection still up: only the shell ended, or when
    it could not decode the stdin). `connection_gone` returns the error to raise when the connection
    itself dropped, else None."""
    if stdin is not None and (len(stdin) > STDIN_BYTES or not shell.takes_stdin) or shell.lock.locked():
        return None
    async with shell.lock:
        await connect()
        try:
            return await shell.run(command, timeout, stdin)
        except NoStdinHere:
            return None
        except SessionLost as lost:
            if lost.sent and (error := await connection_gone(lost)) is not None:
                raise error from None
    return None
