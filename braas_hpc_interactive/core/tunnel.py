"""A tunnel from a local 127.0.0.1 port to a port on a compute node, through the login host.

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
import time
from collections.abc import Callable

from braas_hpc.core.errors import BraasError
from braas_hpc.core.transport import Forward, Transport
from braas_hpc.core.transport.base import Release

log = logging.getLogger(__name__)

CHECK_S = 2.0
BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
Event = Callable[[str], None]


@dataclasses.dataclass
class TunnelStats:
    opened: int = 0  # successful opens, the first included
    drops: int = 0  # drops the watchdog saw
    last_reopen_s: float | None = None  # from noticing the last drop to listening again
    last_error: str = ""


class Tunnel:
    """127.0.0.1:local_port -> remote_host:remote_port, seen from the login host."""

    def __init__(self, make_transport: Callable[[], Transport], remote_host: str, remote_port: int,
                 local_port: int | None = None, check_s: float = CHECK_S, on_event: Event | None = None) -> None:
        self._make_transport = make_transport
        self.remote_host = remote_host
        self.remote_port = remote_port
        self.local_port = local_port or 0
        self.check_s = check_s
        self.stats = TunnelStats()
        self._on_event = on_event or (lambda message: log.info("%s", message))
        self._transport: Transport | None = None
        self._forward: Forward | None = None
        self._release: Release | None = None  # the held terminal session (Transport.hold_interactive)
        self._watchdog: asyncio.Task[None] | None = None
        self._closed = False

    async def open(self) -> int:
        """Listen and start the watchdog; returns the local port. Errors (refused login...) are raised."""
        await self._open_once()
        self._watchdog = asyncio.create_task(self._watch(), name=f"braas-tunnel-{self.local_port}")
        return self.local_port

    async def _open_once(self) -> None:
        self._transport = self._make_transport()
        await self._transport.connect()
        self._forward = await self._transport.forward(self.remote_host, self.remote_port, self.local_port or None)
        self.local_port = self._forward.local_port
        try:  # small messages at once: without it every lock-step round trip waits 40 ms
            self._release = await self._transport.hold_interactive()
        except (BraasError, OSError) as exc:
            self._on_event(f"tunnel works, but with higher latency (no terminal session: {exc})")
        self.stats.opened += 1
        self._on_event(f"tunnel 127.0.0.1:{self.local_port} -> {self.remote_host}:{self.remote_port} open")

    async def alive(self) -> bool:
        return self._forward is not None and await self._forward.alive()

    async def _watch(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.check_s)
            if self._closed or await self._alive_quietly():
                continue
            self.stats.drops += 1
            noticed = time.monotonic()
            self._on_event(f"tunnel 127.0.0.1:{self.local_port} dropped; re-opening")
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
        self._on_event(f"tunnel 127.0.0.1:{self.local_port} closed")

    async def __aenter__(self) -> Tunnel:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def for_session(preset_name: str, backend: str | None, remote_host: str, remote_port: int,
                local_port: int | None = None, check_s: float = CHECK_S, keepalive_s: float = 5.0,
                on_event: Event | None = None) -> Tunnel:
    """A tunnel to a session's node through the preset's login host, on its own connection."""
    from braas_hpc.core.presets import load_preset
    from braas_hpc.core.transport import make_transport, pool, target_for

    preset = load_preset(preset_name)
    target = dataclasses.replace(target_for(preset), keepalive_s=keepalive_s)
    chosen = backend or preset.ssh_backend
    return Tunnel(lambda: make_transport(chosen, target, pool.prompts), remote_host, remote_port, local_port,
                  check_s, on_event)
