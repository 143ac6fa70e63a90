"""Where the keeper listens and who may talk to it: the only module that knows the socket.

The socket is `keeper.sock`, mode 0600, in a directory of ours with mode 0700 ($BRAAS_HPC_KEEPER_DIR, else
$XDG_RUNTIME_DIR/braas-hpc, else the data directory's `keeper/`). A directory or socket another user owns
or can write to is refused, and each side checks the other's uid with SO_PEERCRED where the OS has it
(Linux). Windows has no such socket here (a named pipe would take this module's place): the keeper is
then not used and commands connect directly.
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

from ...paths import data_dir

LINE_LIMIT = 1 << 30  # a command's whole output travels in one message line (base64)

SOCKET_NAME = "keeper.sock"
MAX_SOCKET_PATH = 104  # sun_path is 108 bytes on Linux, 104 on macOS


class KeeperUnavailable(Exception):
    """The keeper cannot be used (no socket support, an unsafe directory, a path too long, not running):
    the caller connects directly instead."""


class KeeperNotRunning(KeeperUnavailable):
    """No keeper listens (none started yet, or it left): one is started."""


def supported() -> bool:
    return os.name == "posix" and hasattr(socket, "AF_UNIX")


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
    parent = os.lstat(path.parent)
    if parent.st_uid not in (0, os.getuid()) or (parent.st_mode & 0o022 and not parent.st_mode & stat.S_ISVTX):
        raise KeeperUnavailable(f"{path.parent} can be changed by other users: the keeper is not used there")
    info = _check_private(path, "the keeper directory")
    if not stat.S_ISDIR(info.st_mode):
        raise KeeperUnavailable(f"{path} is not a directory: refused")
    if len(str(path / SOCKET_NAME).encode()) > MAX_SOCKET_PATH:
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


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end (None where the OS cannot tell: there the 0700 directory
    is the only guard)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return uid


def check_peer(sock: socket.socket) -> None:
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
