"""Where the keeper listens and who may talk to it: the only module that knows the socket.

The socket is `keeper.sock`, mode 0600, in a directory of ours with mode 0700 ($BRAAS_HPC_KEEPER_DIR, else
$XDG_RUNTIME_DIR/braas-hpc, else the data directory's `keeper/`). A directory or socket another user owns
or can write to is refused, and each side checks the other's uid with SO_PEERCRED where the OS has it
(Linux). On Windows the keeper listens on a named pipe instead, and each side proves to the other that it
knows a key only this user can read (pipes.py); BRAAS_HPC_KEEPER_ENDPOINT=pipe runs that endpoint over a
Unix socket elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ...paths import data_dir
from . import pipes

LINE_LIMIT = 1 << 30  # a command's whole output travels in one message line (base64)

SOCKET_NAME = "keeper.sock"
MAX_SOCKET_PATH = 104  # sun_path is 108 bytes on Linux, 104 on macOS


class KeeperUnavailable(Exception):
    """The keeper cannot be used (no socket support, an unsafe directory, a path too long, not running):
    the caller connects directly instead."""


class KeeperNotRunning(KeeperUnavailable):
    """No keeper listens (none started yet, or it left): one is started."""


def supported() -> bool:
    return os.name == "nt" or (os.name == "posix" and hasattr(socket, "AF_UNIX"))


def endpoint() -> str:
    """"pipe" (Windows, or asked for) or "unix"."""
    return "pipe" if os.name == "nt" or os.environ.get("BRAAS_HPC_KEEPER_ENDPOINT") == "pipe" else "unix"


def keeper_dir() -> Path:
    explicit = os.environ.get("BRAAS_HPC_KEEPER_DIR")
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "braas-hpc"
    return data_dir() / "keeper"


def _check_private(path: Path, what: str) -> os.stat_result:
    info = os.lstat(path)
    if info.st_uid != os.getuid():
        raise KeeperUnavailable(f"{what} {path} belongs to uid {info.st_uid}, not to us: refused")
    if info.st_mode & 0o077:
        raise KeeperUnavailable(f"{what} {path} is open to others (mode {stat.S_IMODE(info.st_mode):o}): refused")
    return info


def private_dir() -> Path:
    """The keeper directory, created 0700; refused when it is a link, another user's, or open to others,
    or when its parent lets others replace it (writable by others without the sticky bit)."""
    if not supported():
        raise KeeperUnavailable("this system has no Unix sockets for the keeper")
    path = keeper_dir()
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    if os.name == "nt":
        return path  # in the user's profile, which Windows keeps to its owner; the key proves the rest
    parent = os.lstat(path.parent)
    if parent.st_uid not in (0, os.getuid()) or (parent.st_mode & 0o022 and not parent.st_mode & stat.S_ISVTX):
        raise KeeperUnavailable(f"{path.parent} can be changed by other users: the keeper is not used there")
    info = _check_private(path, "the keeper directory")
    if not stat.S_ISDIR(info.st_mode):
        raise KeeperUnavailable(f"{path} is not a directory: refused")
    if len(str(path / SOCKET_NAME).encode()) > MAX_SOCKET_PATH or len(pipes.address(path).encode()) > MAX_SOCKET_PATH:
        raise KeeperUnavailable(f"the keeper's socket path under {path} is too long for a Unix socket")
    return path


def socket_path() -> Path:
    return private_dir() / SOCKET_NAME


def check_socket(path: Path) -> None:
    """Before connecting: the socket must be ours and 0600."""
    try:
        info = _check_private(path, "the keeper socket")
    except FileNotFoundError as exc:
        raise KeeperNotRunning("no keeper is running") from exc
    if not stat.S_ISSOCK(info.st_mode):
        raise KeeperUnavailable(f"{path} is not a socket: refused")


def peer_uid(sock: socket.socket | None) -> int | None:
    """The uid of the process at the other end (None where the OS cannot tell: there the 0700 directory
    is the only guard; or on a pipe, where the key's proof is)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None or sock is None:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return uid


def check_peer(sock: socket.socket | None) -> None:
    uid = peer_uid(sock)
    if uid is not None and uid != os.getuid():
        raise KeeperUnavailable(f"the keeper socket is served by uid {uid}, not by us: refused")


def listening_socket(path: Path) -> socket.socket:
    """Bind the keeper's socket 0600 (a stale one from a keeper that died is replaced; the caller holds the
    keeper lock, so no live keeper listens there)."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise KeeperUnavailable(f"{path} exists and is not a socket: refused")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # never a moment with the socket open to others
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(64)
    return sock


async def connect(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A checked connection to the keeper: our socket, served by us."""
    check_socket(path)
    reader, writer = await asyncio.open_unix_connection(str(path), limit=LINE_LIMIT)
    try:
        check_peer(writer.get_extra_info("socket"))
    except KeeperUnavailable:
        writer.close()
        raise
    return reader, writer


async def serve(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
                listener: socket.socket) -> asyncio.Server:
    """Serve the keeper's clients on its bound socket; the handler checks each one with `check_peer`."""
    return await asyncio.start_unix_server(handler, sock=listener, limit=LINE_LIMIT)


async def connect_in(directory: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A checked connection to the keeper of `directory`, on this system's endpoint. KeeperNotRunning when
    none listens; KeeperUnavailable when what listens is not ours."""
    if endpoint() == "unix":
        return await connect(directory / SOCKET_NAME)
    try:
        return await pipes.connect(directory, LINE_LIMIT)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise KeeperNotRunning("no keeper is running") from exc
    except (pipes.ProofFailed, TimeoutError) as exc:
        raise KeeperUnavailable(f"the keeper's pipe is not ours: {exc}") from exc


class Listening:
    """The keeper's endpoint while it runs: `serve` starts it, `close` ends it and removes what it left."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.kind = endpoint()
        # Bound now, under the keeper lock (a Unix socket); the pipe opens when served.
        self.sock = listening_socket(directory / SOCKET_NAME) if self.kind == "unix" else None
        self.key = pipes.write_key(directory) if self.kind == "pipe" else b""

    async def serve(self, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> Any:
        if self.sock is not None:
            return await serve(handler, self.sock)
        return await pipes.serve(handler, self.directory, self.key, LINE_LIMIT)

    def remove(self) -> None:
        """Still under the lock: no newer keeper listens there yet."""
        for name in (SOCKET_NAME, pipes.KEY_NAME):
            with contextlib.suppress(FileNotFoundError):
                (self.directory / name).unlink()
        if self.kind == "pipe" and os.name != "nt":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pipes.address(self.directory))
