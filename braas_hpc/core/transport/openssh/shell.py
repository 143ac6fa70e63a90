"""A long-lived remote shell over the OpenSSH master, so a short command costs a few ms, not a
new `ssh` process (about 11 ms on loopback).

One request at a time: the command runs in a subshell (so `cd`, `exit` or exports never touch the
session), with stdin from /dev/null and its output in two temporary files on the cluster; then a
header line with a random token, the exit status and both sizes, then both outputs. Commands that
need stdin, or arrive while the session is busy, use a separate `ssh` call instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable, Sequence

from ...errors import AnswerTooLarge

# The most one answer (stdout and stderr) may hold: the sizes come from the other end, and what they
# announce is read into memory. Listings of a few hundred thousand frames fit many times over.
ANSWER_BYTES = 256 * 1024 * 1024

# Set up once: two private temp files, removed when the session ends.
_SETUP = 'umask 077; O=$(mktemp) && E=$(mktemp) || exit 1; trap \'rm -f "$O" "$E"\' EXIT HUP TERM\n'


class SessionLost(Exception):
    """The session ended. `sent`: the command had been sent, so whether it ran is unknown."""

    def __init__(self, message: str, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class RemoteShell:
    def __init__(self, launch: Callable[[], tuple[Sequence[str], dict[str, str]]]) -> None:
        self._launch = launch  # the ssh argv (over the master) and environment, asked when starting
        self._process: asyncio.subprocess.Process | None = None
        self._token = f"braas-end-{secrets.token_hex(8)}"
        self.lock = asyncio.Lock()

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def _start(self) -> asyncio.subprocess.Process:
        argv, env = self._launch()
        process = await asyncio.create_subprocess_exec(
            *argv, "exec sh", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, env=env)
        assert process.stdin is not None and process.stdout is not None
        ready = f"{self._token} ready"
        process.stdin.write(f"{_SETUP}printf '%s\\n' '{ready}'\n".encode())
        await process.stdin.drain()
        # A login script may print before our shell starts: skip to the ready line.
        try:
            while True:
                line = await asyncio.wait_for(process.stdout.readline(), 30)
                if not line:
                    raise SessionLost("the remote shell did not start", sent=False)
                if line.decode(errors="replace").strip() == ready:
                    break
        except (TimeoutError, ConnectionError, ValueError) as exc:  # ValueError: a line over the reader's limit
            process.kill()
            await process.wait()
            raise SessionLost("the remote shell did not start", sent=False) from exc
        return process

    async def run(self, command: str, timeout: float | None) -> tuple[int, bytes, bytes]:
        """Run one command line; the caller holds `lock`."""
        if not self.alive:
            self._process = await self._start()
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        request = (f'({command}\n) </dev/null >"$O" 2>"$E"; s=$?; '
                   f'printf \'%s %s %s %s\\n\' {self._token} "$s" "$(wc -c <"$O")" "$(wc -c <"$E")"; '
                   'cat "$O" "$E"\n')
        try:
            process.stdin.write(request.encode())
            await process.stdin.drain()
            header = await asyncio.wait_for(self._header(process.stdout), timeout)
            status, out_size, err_size = (int(field) for field in header[1:4])
            if out_size + err_size > ANSWER_BYTES:
                await self._discard(process)
                raise AnswerTooLarge(f"the answer to `{command[:200]}` holds {out_size + err_size} bytes, more "
                                     f"than the {ANSWER_BYTES} bytes braas-hpc reads from one command; nothing of it "
                                     "was kept")
            out = await process.stdout.readexactly(out_size)
            err = await process.stdout.readexactly(err_size)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
            await self.close()
            raise SessionLost(str(exc), sent=True) from exc
        except BaseException:  # a time-out or a cancel leaves the stream mid-answer: start afresh next time
            await self.close()
            raise
        return status, out, err

    async def _header(self, stdout: asyncio.StreamReader) -> list[str]:
        line = await stdout.readline()
        fields = line.decode(errors="replace").split()
        if len(fields) != 4 or fields[0] != self._token:
            raise ValueError(f"unexpected answer from the remote shell: {line[:80]!r}")
        return fields

    async def _discard(self, process: asyncio.subprocess.Process) -> None:
        """End the session without reading its answer: kill the client, drop what its pipe still holds
        (the reader stops reading when its buffer is full, and the process is not reaped before EOF)."""
        self._process = None
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        assert process.stdout is not None
        with contextlib.suppress(Exception):
            while await asyncio.wait_for(process.stdout.read(1 << 16), 10):
                pass
        await process.wait()

    async def close(self) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(Exception):
            assert process.stdin is not None
            process.stdin.close()
            await asyncio.wait_for(process.wait(), 5)
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
