"""The transport face every back end shares (asyncssh, paramiko, system OpenSSH, local).

A back end implements a few primitives (`_exec`, `_open_stream`, `_size`, `_send`, `_receive`,
`listdir`, `forward`, `close`); this base builds the contract on them once: quoting, typed errors,
resumable and verified transfers, directory trees, cancellable streams. A remote command is an argv
list and `quote_command` is the one place it becomes a shell string.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import posixpath
import shlex
import stat
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConnectionFailed, ConnectionLost, RemoteCommandError, TransferError
from .kept_shell import SEND_FILES, KeptShell, SessionLost

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (bytes done, bytes total)
BATCH_FILES = 500  # files asked for in one request of a batch download (its command line stays short)
TRANSFER_ATTEMPTS = 4  # a transfer survives this many dropped connections, resuming each time
PART_SUFFIX = ".braas-part"


def connect_error_words(exc: BaseException) -> str:
    """Why a connection could not be made, in words a user can act on (asyncio says only "Connect call
    failed" for a refused connection)."""
    if isinstance(exc, ConnectionRefusedError):
        return (f"connection refused: nothing accepts connections there (a wrong host or port, or the login node "
                f"is down): {exc}")
    return str(exc) or type(exc).__name__


def quote_command(argv: Sequence[str]) -> str:
    """The single function that turns an argv list into a command line for the remote shell."""
    if not argv:
        raise ValueError("empty command")
    # sshd hands the line to the shell as a C string: a NUL would cut it short, quotes and all.
    if any("\0" in word for word in argv):
        raise ValueError(f"a remote command cannot carry a NUL character: {list(argv)!r}")
    return shlex.join(argv)


# Every command this program runs remotely creates files for its user alone, whatever the site's
# default umask (often 022, and project directories are shared with the whole group).
UMASK = "umask 077; "


def remote_line(argv: Sequence[str]) -> str:
    """The command line actually sent: `quote_command(argv)` behind `umask 077` (which sh, bash, csh and
    fish all read). `quote_command` alone is what a user is shown."""
    return UMASK + quote_command(argv)


@dataclass(frozen=True)
class SSHTarget:
    """Where and how to connect. Unset fields fall back to ~/.ssh/config, then to OpenSSH defaults."""

    host: str
    port: int | None = None
    user: str | None = None
    key_files: tuple[str, ...] = ()
    known_hosts: str | None = None  # None: ~/.ssh/known_hosts
    proxy_jump: str | None = None  # OpenSSH syntax: "user@jump:2222,other"
    ssh_config: str | None = None  # None: ~/.ssh/config when it exists; "none": no config file
    use_agent: bool = True
    connect_timeout: float = 30.0
    keepalive_s: float = 30.0

    @property
    def key(self) -> tuple[object, ...]:
        """What the pool keys connections on: everything that decides where it goes, who logs in and which
        host keys are trusted, so a preset never rides a connection opened under another one's trust."""
        return (self.host, self.user or "", self.port, self.proxy_jump, self.key_files, self.known_hosts,
                self.ssh_config, self.use_agent)


class Prompts(Protocol):
    """Questions only the user can answer. Called from a worker thread; may block until answered.

    Returning None means "no answer" (non-interactive use): authentication then fails cleanly.
    """

    def passphrase(self, key_file: str) -> str | None: ...

    def kbdint(self, name: str, instructions: str, prompts: list[tuple[str, bool]]) -> list[str] | None: ...


class NoPrompts:
    """For scripts and tests: never asks, so nothing can hang waiting for a person."""

    def passphrase(self, key_file: str) -> str | None:
        return None

    def kbdint(self, name: str, instructions: str, prompts: list[tuple[str, bool]]) -> list[str] | None:
        return None


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    exit_status: int | None
    stdout: str
    stderr: str

    def check(self) -> CommandResult:
        if self.exit_status != 0:
            raise RemoteCommandError(quote_command(self.argv), self.exit_status, self.stdout, self.stderr)
        return self


@dataclass(frozen=True)
class RemoteEntry:
    name: str
    size: int
    is_dir: bool = False


@dataclass(frozen=True)
class StreamLine:
    text: str  # without the line ending
    stderr: bool = False


@dataclass
class StreamHandle:
    """What a back end returns for a started command: its lines, then its exit status."""

    lines: AsyncIterator[StreamLine]
    wait: Callable[[], Awaitable[int | None]]  # the exit status, once the lines are exhausted
    close: Callable[[], Awaitable[None]]  # release the channel/process (called in every case)
    # With stdin=True: bytes into the command's stdin (returns once the channel took them), then its end.
    write: Callable[[bytes], Awaitable[None]] | None = None
    write_eof: Callable[[], Awaitable[None]] | None = None


def merge_lines(stdout: Any, stderr: Any, on_line: Callable[[StreamLine], None] | None = None
                ) -> tuple[AsyncIterator[StreamLine], Callable[[], None]]:
    """Read a process's stdout and stderr (asyncio or asyncssh readers) as one stream of lines.

    Returns the lines and a function that stops the readers (for a StreamHandle's close).
    """
    queue: asyncio.Queue[StreamLine | None] = asyncio.Queue()
    failures: list[BaseException] = []

    async def pump(reader: Any, is_stderr: bool) -> None:
        try:
            while raw := await reader.readline():  # empty at end of file
                text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
                line = StreamLine(text.rstrip("\r\n"), is_stderr)
                if on_line:
                    on_line(line)
                await queue.put(line)
        except Exception as exc:  # noqa: BLE001 - a reader of a dropped connection raises instead of ending
            failures.append(exc)
        finally:
            queue.put_nowait(None)  # the lines end in every case: nothing waits on a reader that died

    tasks = [asyncio.create_task(pump(stdout, False)), asyncio.create_task(pump(stderr, True))]

    async def lines() -> AsyncIterator[StreamLine]:
        ended = 0
        while ended < len(tasks):
            item = await queue.get()
            if item is None:
                ended += 1
            else:
                yield item
        if failures:
            raise ConnectionLost(f"the connection dropped while a command's output was read: {failures[0]}") \
                from failures[0]

    def stop() -> None:
        for task in tasks:
            task.cancel()

    return lines(), stop


def pipe_writer(process: asyncio.subprocess.Process, lost: str
                ) -> tuple[Callable[[bytes], Awaitable[None]], Callable[[], Awaitable[None]]]:
    """A StreamHandle's write and write_eof on a local process's stdin pipe (OpenSSH's client, or the
    command itself for `local`); a pipe the other end closed is a ConnectionLost saying `lost`."""
    pipe = process.stdin
    assert pipe is not None

    async def write(data: bytes) -> None:
        try:
            pipe.write(data)
            await pipe.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ConnectionLost(lost) from exc

    async def write_eof() -> None:
        if not pipe.is_closing():
            pipe.close()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await pipe.wait_closed()

    return write, write_eof


Release = Callable[[], Awaitable[None]]
# What a held interactive session runs: waits on its (never written) stdin, ends with the channel.
HOLD_COMMAND = "exec cat"


class Forward(ABC):
    """A listener on 127.0.0.1:local_port, or on the Unix socket local_path (local_port 0), whose
    connections reach remote_host:remote_port via SSH."""

    local_port: int
    remote_host: str
    remote_port: int
    local_path: str | None = None

    @abstractmethod
    async def close(self) -> None: ...

    async def alive(self) -> bool:
        """False once the forward can carry no new connection (closed, or its SSH connection dropped and
        the back end does not reconnect by itself), so a watchdog knows to open it again."""
        return True


def unlink_stale_socket(path: str) -> None:
    """Remove a socket left at `path` by an earlier listener (in the caller's private directory), so the
    new one can bind; anything else there is not ours to remove."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ConnectionFailed(f"{path} exists and is not a socket: remove it, then open the tunnel again")
    os.unlink(path)


def make_private_socket(path: str) -> None:
    """Owner-only access (connecting to a Unix socket needs write permission on it)."""
    os.chmod(path, 0o600)


# GNU dd truncates the whole file when seek rounds down to block 0, so truncate explicitly, then notrunc.
_WRITE_SCRIPT = 'truncate -s "$2" -- "$1" && exec dd of="$1" bs=1M seek="$2" oflag=seek_bytes conv=notrunc status=none'


def write_argv(remote: str, offset: int) -> list[str]:
    """A remote command that writes its stdin into `remote` from byte `offset` (0 creates or truncates)."""
    return ["sh", "-c", _WRITE_SCRIPT, "sh", remote, str(offset)]


# Runs the user's command in its own session so a cancel can end its whole process group, and
# reports the pid first so the cancel knows what to end.
_STREAM_WRAPPER = 'echo "braas-stream-pid $$"; exec "$@"'


class Transport(ABC):
    """One live connection to a cluster (or to this computer). Use as `async with`."""

    name = "abstract"

    # ---- primitives each back end provides -------------------------------------------------------

    @abstractmethod
    async def connect(self) -> None:
        """Open the connection if it is not open (idempotent). Raises typed ConnectionFailed errors."""

    @abstractmethod
    async def _exec(self, command: str, stdin: bytes | None, timeout: float | None) -> tuple[int | None, bytes, bytes]:
        """Run a shell command line; return (exit status, stdout, stderr)."""

    @abstractmethod
    async def _open_stream(self, command: str, stdin: bool = False) -> StreamHandle:
        """Start a command whose stdout and stderr lines are read as they arrive; with `stdin`, the
        handle also writes the command's stdin (else it reads /dev/null)."""

    @abstractmethod
    async def _size(self, remote: str) -> int | None:
        """Size of a remote regular file, or None when it does not exist."""

    @abstractmethod
    async def _send(self, local: Path, remote: str, offset: int, progress: Progress | None) -> None:
        """Write local[offset:] into remote at offset (offset 0 creates or truncates it)."""

    @abstractmethod
    async def _receive(self, remote: str, local: Path, offset: int, progress: Progress | None) -> None:
        """Write remote[offset:] into local at offset (offset 0 creates or truncates it)."""

    @abstractmethod
    async def listdir(self, remote: str) -> list[RemoteEntry]:
        """Entries of a directory (files and directories); an empty list when it does not exist."""

    @abstractmethod
    async def forward(self, remote_host: str, remote_port: int, local_port: int | None = None,
                      local_path: str | None = None) -> Forward:
        """Listen on 127.0.0.1 (a free port when none is given), or on the Unix socket `local_path` (mode
        0600; the caller owns its private directory), and tunnel to remote_host:remote_port."""

    async def hold_interactive(self) -> Release | None:
        """Keep a session with a terminal open on this connection; returns what ends it, or None where
        the back end cannot.

        OpenSSH's sshd turns Nagle's algorithm off for a connection (TCP_NODELAY) only once it runs a
        command with a terminal. A tunnel carrying a lock-step protocol (the render client's small
        messages and one-byte ACKs) otherwise waits for the client's delayed ACK, 40 ms a round trip:
        measured 44 ms a frame instead of 4.5 for a 64x36 remote render.
        """
        return None

    async def close(self) -> None:
        return None

    # ---- the contract, built once on the primitives ------------------------------------------------

    async def run(
        self, argv: Sequence[str], *, stdin: str | bytes | None = None, timeout: float | None = 300,
        check: bool = True,
    ) -> CommandResult:
        data = stdin.encode() if isinstance(stdin, str) else stdin
        started = time.monotonic()
        status, out, err = await self._exec(remote_line(argv), data, timeout)
        if log.isEnabledFor(logging.DEBUG):  # `--debug`, `--log-file`: what ran where, and how long it took
            log.debug("%s %s: %.300s -> exit %s in %.3f s (%d bytes out, %d err)", self.name, self._where(),
                      quote_command(argv), status, time.monotonic() - started, len(out), len(err))
        result = CommandResult(tuple(argv), status, out.decode(errors="replace"), err.decode(errors="replace"))
        return result.check() if check else result

    def _where(self) -> str:
        target = getattr(self, "target", None)
        return f"{target.host}" if target is not None else "this computer"

    async def stream(self, argv: Sequence[str], *, check: bool = True) -> AsyncIterator[StreamLine]:
        """Lines as they arrive. Cancelling, or closing the generator early, ends the remote process group.

        Use `async with contextlib.aclosing(t.stream(argv)) as lines:` to leave a loop with `break`
        and have the remote command ended at once (not when the generator is garbage-collected).
        """
        command = remote_line(["setsid", "sh", "-c", _STREAM_WRAPPER, "sh", *argv])
        handle = await self._open_stream(command)
        pid: str | None = None
        finished = False
        try:
            async for line in handle.lines:
                if pid is None and not line.stderr and line.text.startswith("braas-stream-pid "):
                    pid = line.text.split()[1]
                    continue
                yield line
            status = await handle.wait()
            finished = True
            if check and status != 0:
                raise RemoteCommandError(quote_command(argv), status, "", "")
        finally:
            if not finished and pid is not None and pid.isdigit():
                await asyncio.shield(self._end_group(pid))
            await handle.close()

    async def converse(self, argv: Sequence[str]) -> StreamHandle:
        """Start a command that reads what `write` sends while its lines are read: a conversation in one
        channel (the cluster's submission helper). The caller closes the handle."""
        handle = await self._open_stream(remote_line(argv), stdin=True)
        assert handle.write is not None and handle.write_eof is not None
        return handle

    async def _end_group(self, pid: str) -> None:
        try:
            await self.run(["kill", "-TERM", "--", f"-{pid}"], check=False, timeout=30)
        except (ConnectionLost, OSError):
            pass  # the connection is gone: sshd already hung up on the process

    async def sha256(self, remote: str) -> str:
        done = await self.run(["sha256sum", "--", remote])
        return done.stdout.split()[0]

    async def put(self, local: Path, remote: str, progress: Progress | None = None, *, verify: bool = False) -> None:
        """Upload a file into an existing directory. It appears under its final name only when complete
        (temp name + rename).

        An upload continues from the size of a temp file left by a dropped connection (in this call
        or an earlier one) and then checks SHA-256 on both sides; `verify=True` checks it always.
        """
        temp = posixpath.join(posixpath.dirname(remote) or ".", f".{posixpath.basename(remote)}{PART_SUFFIX}")
        total = local.stat().st_size
        offset = await self._size(temp) or 0
        offset = offset if offset <= total else 0
        resumed = offset > 0
        for attempt in range(TRANSFER_ATTEMPTS):
            try:
                await self._send(local, temp, offset, progress)
                break
            except ConnectionLost:
                if attempt == TRANSFER_ATTEMPTS - 1:
                    raise
                resumed = True
                offset = min(await self._size(temp) or 0, total)  # the next call reconnects
        if resumed or verify:
            if await asyncio.to_thread(sha256_file, local) != await self.sha256(temp):
                await self.run(["rm", "-f", "--", temp], check=False)
                raise TransferError(f"upload of {local} to {remote} is corrupt (SHA-256 differs); removed it")
        elif await self._size(temp) != total:
            raise TransferError(f"upload of {local} to {remote} is incomplete")
        await self.run(["mv", "-f", "--", temp, remote])

    async def send_exact(self, local: Path, remote: str, progress: Progress | None = None) -> None:
        """Write a whole file to exactly `remote`, with no temp name, resume or check: for callers that
        verify and rename many files in one command afterwards (the content-addressed store)."""
        await self._send(local, remote, 0, progress)

    async def get(self, remote: str, local: Path, progress: Progress | None = None, *, verify: bool = False) -> None:
        """Download a file; the local file appears only when complete. Resumes and verifies like `put`."""
        local.parent.mkdir(parents=True, exist_ok=True)
        temp = _part_of(local)
        if temp.is_symlink():  # never write through a link planted under our temp name
            temp.unlink()
        total = await self._size(remote)
        if total is None:
            raise TransferError(f"remote file not found: {remote}")
        offset = temp.stat().st_size if temp.exists() else 0
        offset = offset if offset <= total else 0
        resumed = offset > 0
        for attempt in range(TRANSFER_ATTEMPTS):
            try:
                await self._receive(remote, temp, offset, progress)
                break
            except ConnectionLost:
                if attempt == TRANSFER_ATTEMPTS - 1:
                    raise
                resumed = True
                offset = min(temp.stat().st_size if temp.exists() else 0, total)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                temp.unlink(missing_ok=True)  # gives the space back; nothing half-written stays
                raise TransferError(f"no space left on the local disk for {local.name} in {local.parent} "
                                    f"({exc.strerror}); free some space and run again") from exc
        if resumed or verify:
            if await asyncio.to_thread(sha256_file, temp) != await self.sha256(remote):
                temp.unlink(missing_ok=True)
                raise TransferError(f"download of {remote} to {local} is corrupt (SHA-256 differs); removed it")
        elif temp.stat().st_size != total:
            raise TransferError(f"download of {remote} to {local} is incomplete")
        temp.replace(local)

    def _kept_shell(self) -> KeptShell | None:
        """The back end's long-lived remote shell, when it keeps one (get_batch streams files through it)."""
        return None

    async def get_batch(self, items: Sequence[tuple[str, Path]],
                        progress: Callable[[str], Progress | None] | None = None) -> set[str]:
        """Whole files (remote, local) in one exchange on the kept shell, one stream after the other: one
        round trip plus the bytes, however many files. Each local file appears only when complete (its temp
        file renamed) with the size the cluster gave. Returns the remote paths written; the caller fetches
        the rest with `get` (not there, a temp file to resume, a back end without a kept shell, the shell
        busy, the session lost midway: `get` resumes what it left and checks it)."""
        shell = self._kept_shell()
        fresh = [(remote, local) for remote, local in items if not os.path.lexists(_part_of(local))]
        done: set[str] = set()
        if shell is None or not fresh or shell.lock.locked():
            return done

        def receive(group: Sequence[tuple[str, Path]]) -> Callable[[int, int | None, AsyncIterator[bytes]],
                                                                      Awaitable[None]]:
            async def on_file(index: int, size: int | None, chunks: AsyncIterator[bytes]) -> None:
                remote, local = group[index]
                if size is None:
                    return  # gone since the listing: `get` says so
                report = progress(remote) if progress else None
                local.parent.mkdir(parents=True, exist_ok=True)
                temp = _part_of(local)
                try:
                    with temp.open("xb") as out:  # exclusive: never through a link planted under our temp name
                        written = 0
                        async for chunk in chunks:
                            out.write(chunk)
                            written += len(chunk)
                            if report:
                                report(written, size)
                except OSError:
                    temp.unlink(missing_ok=True)  # a full disk gets its space back; `get` tells the user
                    raise
                temp.replace(local)
                done.add(remote)
            return on_file

        async with shell.lock:
            await self.connect()
            for start in range(0, len(fresh), BATCH_FILES):
                group = fresh[start:start + BATCH_FILES]
                try:
                    await shell.send_files(remote_line(["sh", "-c", SEND_FILES, "sh", *(r for r, _ in group)]),
                                           len(group), receive(group))
                except (SessionLost, OSError):
                    break  # what arrived stays; `get` resumes the file cut off and fetches the rest
        return done

    async def put_tree(self, local_dir: Path, remote_dir: str, progress: Progress | None = None) -> int:
        """Upload a directory tree (regular files; symlinks are followed). Returns the number of files."""
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        parents = {posixpath.join(remote_dir, *p.parent.relative_to(local_dir).parts) for p in files}
        dirs = sorted(parents | {remote_dir})
        await self.run(["mkdir", "-p", "--", *dirs])
        for path in files:
            await self.put(path, posixpath.join(remote_dir, *path.relative_to(local_dir).parts), progress)
        return len(files)

    async def get_tree(self, remote_dir: str, local_dir: Path, progress: Progress | None = None) -> int:
        """Download a directory tree. Names that would leave local_dir are refused. Returns the file count."""
        count = 0
        root = local_dir.resolve()
        for entry in await self.listdir(remote_dir):
            unsafe = entry.name in ("", ".", "..") or any(c in entry.name for c in "/\0")
            target = root if unsafe else (local_dir / entry.name).resolve()  # no NUL reaches resolve()
            if unsafe or target.parent != root:
                raise TransferError(f"refusing remote name {entry.name!r} in {remote_dir}")
            source = posixpath.join(remote_dir, entry.name)
            if entry.is_dir:
                target.mkdir(parents=True, exist_ok=True)
                count += await self.get_tree(source, target, progress)
            else:
                await self.get(source, target, progress)
                count += 1
        return count

    async def __aenter__(self) -> Transport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _part_of(local: Path) -> Path:
    """Where a download is written until it is complete."""
    return local.with_name(f".{local.name}{PART_SUFFIX}")


def sha256_file(path: Path) -> str:
    """The SHA-256 of a local file, read in 1 MiB blocks (the one helper for the whole core)."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
