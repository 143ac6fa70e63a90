"""The keeper's endpoint on Windows: a named pipe, and a proof both ways that the other end is the same user.

Windows has no Unix sockets for Python's asyncio, so the keeper listens on a named pipe whose name comes
from the keeper directory (in the user's own profile). A pipe name is open to anyone: another user could
create it first, or open it. So before any request, each side proves it knows the keeper's key, a random
secret the keeper writes at start into its directory (readable by its owner only, as the profile is):
the client sends a fresh nonce, the keeper answers with its own nonce and an HMAC over both, the client
checks it and answers with an HMAC of its own. An impostor keeper learns nothing (the client sends no
request, and a secret never crosses the pipe); an impostor client gets no service. Any failure means no
keeper: the command connects directly.

The same endpoint runs over a Unix socket where the pipe calls do not exist (BRAAS_HPC_KEEPER_ENDPOINT=pipe),
so everything here but the two pipe calls of Windows' event loop is exercised on Linux too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

KEY_NAME = "keeper.key"
PIPE_PREFIX = "\\\\.\\pipe\\braas-hpc-keeper-"
GREETING = b"braas-keeper-proof-1 "
PROOF_TIMEOUT_S = 5.0
NONCE_BYTES = 32

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class ProofFailed(Exception):
    """The other end did not prove it knows the keeper's key."""


def address(directory: Path) -> str:
    """Where the keeper of this directory listens: a pipe name on Windows, else a socket in the directory."""
    if os.name == "nt":
        return PIPE_PREFIX + hashlib.sha256(str(directory).lower().encode()).hexdigest()[:32]
    return str(directory / "keeper.pipe.sock")


def write_key(directory: Path) -> bytes:
    """A new key for this keeper's life, in place whole (a temp file renamed), owner-only."""
    key = secrets.token_bytes(32)
    temp = directory / f".{KEY_NAME}.{secrets.token_hex(6)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    try:
        os.write(fd, key.hex().encode())
    finally:
        os.close(fd)
    os.replace(temp, directory / KEY_NAME)
    return key


def read_key(directory: Path) -> bytes | None:
    try:
        return bytes.fromhex((directory / KEY_NAME).read_text().strip())
    except (OSError, ValueError):
        return None


def _mac(key: bytes, role: bytes, first: bytes, second: bytes) -> str:
    return hmac.new(key, role + first + second, hashlib.sha256).hexdigest()


async def _line(reader: asyncio.StreamReader) -> bytes:
    line = await reader.readline()
    if not line.endswith(b"\n") or len(line) > 512:
        raise ProofFailed("the other end hung up or said something else")
    return line.rstrip(b"\n")


async def prove_to_keeper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: bytes) -> None:
    """The client's side: the keeper proves itself first; then the client does."""
    ours = secrets.token_bytes(NONCE_BYTES)
    writer.write(GREETING + ours.hex().encode() + b"\n")
    await writer.drain()
    async with asyncio.timeout(PROOF_TIMEOUT_S):
        theirs_hex, _, mac = (await _line(reader)).decode(errors="replace").partition(" ")
    try:
        theirs = bytes.fromhex(theirs_hex)
    except ValueError as exc:
        raise ProofFailed("the keeper's answer is not a proof") from exc
    if len(theirs) != NONCE_BYTES or not hmac.compare_digest(mac, _mac(key, b"keeper", ours, theirs)):
        raise ProofFailed("the pipe's keeper does not know this user's key: not ours")
    writer.write(_mac(key, b"client", theirs, ours).encode() + b"\n")
    await writer.drain()


async def prove_to_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: bytes) -> None:
    """The keeper's side."""
    async with asyncio.timeout(PROOF_TIMEOUT_S):
        greeting = await _line(reader)
        if not greeting.startswith(GREETING):
            raise ProofFailed("not a braas-hpc client")
        try:
            theirs = bytes.fromhex(greeting[len(GREETING):].decode(errors="replace"))
        except ValueError as exc:
            raise ProofFailed("a client's greeting without a nonce") from exc
        if len(theirs) != NONCE_BYTES:
            raise ProofFailed("a client's greeting without a nonce")
        ours = secrets.token_bytes(NONCE_BYTES)
        writer.write(ours.hex().encode() + b" " + _mac(key, b"keeper", theirs, ours).encode() + b"\n")
        await writer.drain()
        mac = (await _line(reader)).decode(errors="replace")
    if not hmac.compare_digest(mac, _mac(key, b"client", ours, theirs)):
        raise ProofFailed("a client that does not know the key")


# ---- the plumbing: Windows' pipe calls, or a Unix socket standing in for them -----------------------------

def _plumbing() -> tuple[Callable[..., Awaitable[Any]], Callable[..., Awaitable[Any]]]:
    loop = asyncio.get_running_loop()
    if os.name == "nt":  # the proactor loop's pipe server and client (what asyncio itself uses for pipes)
        return loop.start_serving_pipe, loop.create_pipe_connection  # type: ignore[attr-defined]
    return loop.create_unix_server, loop.create_unix_connection


async def serve(handler: Handler, directory: Path, key: bytes, limit: int) -> Any:
    """Listen; each client proves itself before `handler` sees it. Returns what `close()` stops."""
    loop = asyncio.get_running_loop()
    start_serving, _ = _plumbing()

    async def checked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await prove_to_client(reader, writer, key)
        except (ProofFailed, TimeoutError, OSError):
            writer.close()
            return
        await handler(reader, writer)

    def factory() -> asyncio.StreamReaderProtocol:
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=limit, loop=loop), checked, loop=loop)

    where = address(directory)
    if os.name != "nt":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(where)  # a stale one (the caller holds the keeper lock)
        old = os.umask(0o177)
        try:
            return await start_serving(factory, where)
        finally:
            os.umask(old)
    servers = await start_serving(factory, where)
    return _Servers(servers)


class _Servers:
    def __init__(self, servers: list[Any]) -> None:
        self.servers = servers

    def close(self) -> None:
        for server in self.servers:
            server.close()


async def connect(directory: Path, limit: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the keeper that proved itself. FileNotFoundError / ConnectionRefusedError: none runs."""
    key = read_key(directory)
    if key is None:
        raise FileNotFoundError("no keeper key")
    loop = asyncio.get_running_loop()
    _, open_connection = _plumbing()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    transport, protocol = await open_connection(lambda: asyncio.StreamReaderProtocol(reader, loop=loop),
                                                address(directory))
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    try:
        await prove_to_keeper(reader, writer, key)
    except BaseException:
        writer.close()
        raise
    return reader, writer
