"""A tunnel from a local Unix socket (or, on Windows or when asked, a 127.0.0.1 port) to a port on a
compute node, through the login host.

The Unix socket is mode 0600 in a directory of this user's alone (0700, checked), so no other user of a
shared workstation or login node can connect to it or take its place while the tunnel re-opens; a port
on 127.0.0.1 is open to every local user, which the CLI and the panel say when they use one.

It has its own SSH connection (not the shared pool's), so re-opening it never disturbs other work, and
short keepalives, so a silent drop is noticed. A watchdog asks the forward every `check_s` whether it
can still carry connections (`Forward.alive`); when not, it closes what is left, reconnects with
back-off and listens on the same local port again, so a client only has to reconnect. `close` ends
the watchdog and the forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import socket
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from braas_hpc.core.errors import BraasError
from braas_hpc.core.transport import Forward, Transport
from braas_hpc.core.transport.base import Release

log = logging.getLogger(__name__)

CHECK_S = 2.0
BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
Event = Callable[[str], None]
UNIX_SOCKETS = hasattr(socket, "AF_UNIX") and os.name != "nt"  # Windows: a 127.0.0.1 port
MAX_SOCKET_PATH = 100  # sun_path is 104 bytes on macOS and the BSDs, 108 on Linux
TCP_WARNING = "the tunnel is a 127.0.0.1 port: every user of this computer can connect to it"


def private_dir(base: str | None = None) -> Path:
    """<tmp>/braas-tunnels-UID, mode 0700 and ours (checked, not trusted): where tunnel sockets live.
    Short, as a Unix socket's path is limited to about 104 bytes."""
    path = Path(base or tempfile.gettempdir()) / f"braas-tunnels-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise BraasError(f"{path} must be a directory of this user with mode 0700 (it holds the tunnels' "
                         "sockets); another user may have made it: remove it and try again")
    return path


def socket_path(name: str = "") -> str:
    """A fresh socket path in the private directory, named after the session when given."""
    safe = "".join(c for c in name if c.isalnum() or c in "-_.")[:24]
    path = str(private_dir() / f"{safe or 'tunnel'}-{secrets.token_hex(4)}.sock")
    if len(path.encode()) > MAX_SOCKET_PATH and os.path.isdir("/tmp"):  # macOS' long per-user temp dir
        path = str(private_dir("/tmp") / Path(path).name)
    return path


@dataclasses.dataclass
class TunnelStats:
    opened: int = 0  # successful opens, the first included
    drops: int = 0  # drops the watchdog saw
    last_reopen_s: float | None = None  # from noticing the last drop to listening again
    last_error: str = ""


class Tunnel:
    """local_path (a Unix socket) or 127.0.0.1:local_port -> remote_host:remote_port, seen from the login
    host. The socket path and the port stay the same across re-opens: a client only reconnects."""

    def __init__(self, make_transport: Callable[[], Transport], remote_host: str, remote_port: int,
                 local_port: int | None = None, check_s: float = CHECK_S, on_event: Event | None = None,
                 local_path: str | None = None) -> None:
        self._make_transport = make_transport
        self.remote_host = remote_host
        self.remote_port = remote_port
        self.local_port = local_port or 0
        self.local_path = local_path
        self.check_s = check_s
        self.stats = TunnelStats()
        self._on_event = on_event or (lambda message: log.info("%s", message))
        self._transport: Transport | None = None
        self._forward: Forward | None = None
        self._release: Release | None = None  # the held terminal session (Transport.hold_interactive)
        self._watchdog: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def address(self) -> tuple[str, int]:
        """What a client connects to: (socket path, 0) or ("127.0.0.1", port); RenderClient takes either."""
        return (self.local_path, 0) if self.local_path else ("127.0.0.1", self.local_port)

    @property
    def local_end(self) -> str:
        return self.local_path or f"127.0.0.1:{self.local_port}"

    async def open(self) -> int:
        """Listen and start the watchdog; returns the local port (0 for a Unix socket). Errors (refused
        login...) are raised."""
        await self._open_once()
        self._watchdog = asyncio.create_task(self._watch(), name=f"braas-tunnel-{self.local_end}")
        return self.local_port

    async def _open_once(self) -> None:
        self._transport = self._make_transport()
        await self._transport.connect()
        if self.local_path:
            self._forward = await self._transport.forward(self.remote_host, self.remote_port,
                                                          local_path=self.local_path)
        else:
            self._forward = await self._transport.forward(self.remote_host, self.remote_port,
                                                          self.local_port or None)
            self.local_port = self._forward.local_port
        try:  # small messages at once: without it every lock-step round trip waits 40 ms
            self._release = await self._transport.hold_interactive()
        except (BraasError, OSError) as exc:
            self._on_event(f"tunnel works, but with higher latency (no terminal session: {exc})")
        self.stats.opened += 1
        self._on_event(f"tunnel {self.local_end} -> {self.remote_host}:{self.remote_port} open")

    async def alive(self) -> bool:
        return self._forward is not None and await self._forward.alive()

    async def _watch(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.check_s)
            if self._closed or await self._alive_quietly():
                continue
            self.stats.drops += 1
            noticed = time.monotonic()
            self._on_event(f"tunnel {self.local_end} dropped; re-opening")
            await self._discard()
            await self._reopen()
            self.stats.last_reopen_s = time.monotonic() - noticed
            self._on_event(f"tunnel re-opened in {self.stats.last_reopen_s:.2f} s")

    async def _alive_quietly(self) -> bool:
        try:
            return await asyncio.wait_for(self.alive(), timeout=max(self.check_s, 5.0) * 3)
        except (BraasError, OSError, TimeoutError):
            return False

    async def _reopen(self) -> None:
        attempt = 0
        while not self._closed:
            try:
                await self._open_once()
                return
            except (BraasError, OSError) as exc:  # the login host is away, or the port not free yet
                self.stats.last_error = str(exc)
                await self._discard()
                delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
                self._on_event(f"tunnel re-open failed ({exc}); next try in {delay:.1f} s")
                attempt += 1
                await asyncio.sleep(delay)

    async def _discard(self) -> None:
        release, forward, transport = self._release, self._forward, self._transport
        self._release = self._forward = self._transport = None
        for close in (release, forward and forward.close, transport and transport.close):
            if close is not None:
                with contextlib.suppress(BraasError, OSError, TimeoutError):
                    await asyncio.wait_for(close(), timeout=10)

    async def close(self) -> None:
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        await self._discard()
        if self.local_path:  # our own directory: the socket file is ours to remove
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.local_path)
        self._on_event(f"tunnel {self.local_end} closed")

    async def __aenter__(self) -> Tunnel:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def for_session(preset_name: str, backend: str | None, remote_host: str, remote_port: int,
                local_port: int | None = None, check_s: float = CHECK_S, keepalive_s: float = 5.0,
                on_event: Event | None = None, tcp: bool = False, name: str = "") -> Tunnel:
    """A tunnel to a session's node through the preset's login host, on its own connection (or the kept
    one, when the connection keeper is on): a private Unix socket, unless the OS has none or `tcp` (or a
    `local_port`) asks for a 127.0.0.1 port."""
    from braas_hpc.core.presets import load_preset
    from braas_hpc.core.transport import pool, target_for

    preset = load_preset(preset_name)
    target = dataclasses.replace(target_for(preset), keepalive_s=keepalive_s)
    chosen = backend or preset.ssh_backend
    path = None if tcp or local_port or not UNIX_SOCKETS else socket_path(name)
    return Tunnel(lambda: pool.dedicated(preset, chosen, target), remote_host, remote_port, local_port,
                  check_s, on_event, local_path=path)
