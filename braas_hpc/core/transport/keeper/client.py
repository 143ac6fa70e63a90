"""A transport whose connection is kept by the keeper process: the primitives become keeper requests.

The keeper runs on this computer as this user, so files are read and written by it on our own paths;
command lines, their output and stream lines cross the socket. Login questions come back to this
command's own Prompts. When the keeper cannot be used (cannot start, unsafe directory, another
version, dies) the command goes on over a direct connection of its own and says so in the debug log:
a command never fails because of the keeper.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ... import VERSION
from ...errors import ConnectionLost
from ..base import (
    Forward,
    Progress,
    Prompts,
    Release,
    RemoteEntry,
    SSHTarget,
    StreamHandle,
    Transport,
)
from ..kept_shell import KeptShell
from . import sockets, wire
from .link import KeeperGone, KeeperMismatch, Request, open_connection
from .stream import KeptStream

log = logging.getLogger(__name__)
KEPT_KEEPALIVE_S = 5.0  # the interactive tunnel's own: three missed, and the link is known dead in 15 s


def portable_target(target: SSHTarget) -> dict[str, Any]:
    """The target as the keeper must see it: paths absolute (its working directory is not ours), and a
    keepalive short enough that a kept connection that died quietly (a laptop asleep, a VPN switched) is
    noticed while idle, not by the next command, and that a tunnel on it is re-opened quickly."""
    def absolute(path: str | None) -> str | None:
        return os.path.abspath(os.path.expanduser(path)) if path and path != "none" else path

    values = dataclasses.asdict(target)
    values["keepalive_s"] = min(target.keepalive_s, KEPT_KEEPALIVE_S)
    values["key_files"] = [absolute(k) for k in target.key_files]
    values["known_hosts"] = absolute(target.known_hosts)
    values["ssh_config"] = absolute(target.ssh_config)
    return values


class KeptForward(Forward):
    """A forward listening in the keeper, for as long as this request's connection stays open."""

    def __init__(self, request: Request, reply: dict[str, Any], remote_host: str, remote_port: int) -> None:
        self._request = request
        self.local_port = int(reply.get("local_port") or 0)
        self.local_path = reply.get("local_path")
        self.remote_host = remote_host
        self.remote_port = remote_port
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        self._request.close()
        with contextlib.suppress(OSError):
            await self._request.writer.wait_closed()

    async def alive(self) -> bool:
        async with self._lock:
            if self._request.writer.is_closing():
                return False
            try:
                await wire.send(self._request.writer, {"alive": True})
                return bool((await self._request.next()).get("alive"))
            except (KeeperGone, OSError, sockets.KeeperUnavailable):
                return False


class KeptTransport(Transport):
    """The face of a kept connection; `direct` makes the command's own connection when the keeper fails."""

    def __init__(self, backend: str, target: SSHTarget, prompts: Prompts, keep_s: float,
                 direct: Callable[[], Transport]) -> None:
        self.name = backend
        self.backend = backend
        self.target = target
        self.prompts = prompts
        self.keep_s = keep_s
        self._make_direct = direct
        self._direct: Transport | None = None

    @property
    def is_direct(self) -> bool:
        """True once this command has gone on without the keeper."""
        return self._direct is not None

    def _go_direct(self, why: object) -> Transport:
        if self._direct is None:
            log.debug("connection keeper not used for %s (%s): connecting directly", self.target.host, why)
            self._direct = self._make_direct()
        return self._direct

    def _login_env(self) -> dict[str, str]:
        """What of our environment decides this login (the keeper's must be the same): HOME (~/.ssh), and
        the ssh-agent when the target may use one."""
        keys = [k for k in wire.ENV_KEYS if k != "SSH_AUTH_SOCK" or self.target.use_agent]
        return {k: os.environ.get(k, "") for k in keys}

    async def _open(self, op: str, progress: Progress | None = None, **args: Any) -> Request | None:
        """The request sent, or None when this command goes direct."""
        if self._direct is not None:
            return None
        try:
            reader, writer = await open_connection()
            await wire.send(writer, {"op": op, "protocol": wire.PROTOCOL, "version": VERSION, "backend": self.backend,
                                     "target": portable_target(self.target), "keep_s": self.keep_s,
                                     "env": self._login_env(), **args})
        except (sockets.KeeperUnavailable, OSError) as exc:
            self._go_direct(exc)
            return None
        return Request(reader, writer, self.prompts, progress)

    async def _call(self, op: str, *, replayable: bool, progress: Progress | None = None,
                    **args: Any) -> dict[str, Any] | None:
        """The keeper's reply, or None when the caller must do it directly. A keeper lost in the middle of
        a request that must not run twice (a command, an upload) is a lost connection, as when the SSH
        connection itself drops; the next call goes direct."""
        request = await self._open(op, progress, **args)
        if request is None:
            return None
        try:
            return await request.result()
        except KeeperMismatch as exc:
            self._go_direct(exc)
            return None
        except KeeperGone as exc:
            self._go_direct(exc)
            if replayable:
                return None
            raise ConnectionLost(f"the connection keeper stopped during a request to {self.target.host}") from exc
        finally:
            request.close()

    def _kept_shell(self) -> KeptShell | None:
        return self._direct._kept_shell() if self._direct is not None else None

    async def get_batch(self, items: Sequence[tuple[str, Path]],
                        progress: Callable[[str], Progress | None] | None = None) -> set[str]:
        """The keeper streams the files through its connection's kept shell and writes them here (each
        local file appears whole, as Transport.get_batch makes them)."""
        if self._direct is not None:
            return await self._direct.get_batch(items, progress)
        reports = [progress(remote) if progress else None for remote, _ in items]

        def report(index: int, done: int, total: int) -> None:
            if 0 <= index < len(reports) and (each := reports[index]) is not None:
                each(done, total)

        reply = await self._call("batch", replayable=True, progress=report,  # type: ignore[arg-type]
                                 items=[[remote, str(local.absolute())] for remote, local in items])
        if reply is None:
            return await self._go_direct("direct").get_batch(items, progress)
        return {remote for remote in reply["done"] if isinstance(remote, str)}

    # ---- primitives ---------------------------------------------------------------------------

    async def connect(self) -> None:
        if await self._call("connect", replayable=True) is None:
            await self._go_direct("direct").connect()

    async def _exec(self, command: str, stdin: bytes | None, timeout: float | None
                    ) -> tuple[int | None, bytes, bytes]:
        reply = await self._call("exec", replayable=False, command=command, stdin=wire.encode_bytes(stdin),
                                 timeout=timeout)
        if reply is None:
            return await self._go_direct("direct")._exec(command, stdin, timeout)
        return reply["status"], wire.decode_bytes(reply["stdout"]), wire.decode_bytes(reply["stderr"])

    async def _open_stream(self, command: str, stdin: bool = False) -> StreamHandle:
        request = await self._open("stream", command=command, stdin=stdin)
        if request is None:
            return await self._go_direct("direct")._open_stream(command, stdin)
        try:
            opened = await request.next()  # the stream's own errors (refused, lost) come here, typed
            if "opened" not in opened:
                raise KeeperGone(f"unexpected keeper message: {sorted(opened)}")
        except (KeeperGone, KeeperMismatch) as exc:  # nothing ran yet: the command goes on directly
            request.close()
            self._go_direct(exc)
            return await self._go_direct("direct")._open_stream(command, stdin)
        except BaseException:
            request.close()
            raise
        return KeptStream(request, self.target.host, self._go_direct).handle(stdin)

    async def _size(self, remote: str) -> int | None:
        reply = await self._call("size", replayable=True, remote=remote)
        if reply is None:
            return await self._go_direct("direct")._size(remote)
        return reply["size"]

    async def _send(self, local: Path, remote: str, offset: int, progress: Progress | None) -> None:
        reply = await self._call("send", replayable=False, progress=progress, local=str(local.absolute()),
                                 remote=remote, offset=offset)
        if reply is None:
            await self._go_direct("direct")._send(local, remote, offset, progress)

    async def _receive(self, remote: str, local: Path, offset: int, progress: Progress | None) -> None:
        reply = await self._call("receive", replayable=True, progress=progress, remote=remote,
                                 local=str(local.absolute()), offset=offset)
        if reply is None:
            await self._go_direct("direct")._receive(remote, local, offset, progress)

    async def listdir(self, remote: str) -> list[RemoteEntry]:
        reply = await self._call("listdir", replayable=True, remote=remote)
        if reply is None:
            return await self._go_direct("direct").listdir(remote)
        return [RemoteEntry(str(name), int(size), bool(is_dir)) for name, size, is_dir in reply["entries"]]

    async def _held(self, op: str, **args: Any) -> tuple[Request, dict[str, Any]] | None:
        """A request that stays open as long as what it opened is used (a forward, a terminal session):
        the open request and the keeper's reply, or None when the caller must do it directly."""
        request = await self._open(op, **args)
        if request is None:
            return None
        try:
            return request, await request.result()
        except (KeeperGone, KeeperMismatch) as exc:
            request.close()
            self._go_direct(exc)
            return None
        except BaseException:
            request.close()
            raise

    async def forward(self, remote_host: str, remote_port: int, local_port: int | None = None,
                      local_path: str | None = None) -> Forward:
        held = await self._held("forward", remote_host=remote_host, remote_port=remote_port, local_port=local_port,
                                local_path=local_path)
        if held is None:
            return await self._go_direct("direct").forward(remote_host, remote_port, local_port, local_path)
        return KeptForward(*held, remote_host, remote_port)

    async def hold_interactive(self) -> Release | None:
        held = await self._held("hold")
        if held is None:
            return await self._go_direct("direct").hold_interactive()
        request, reply = held
        if not reply.get("held"):
            request.close()
            return None

        async def release() -> None:
            request.close()

        return release

    async def close(self) -> None:
        """The kept connection stays open for the next command; only a direct one of ours is closed."""
        if self._direct is not None:
            await self._direct.close()
