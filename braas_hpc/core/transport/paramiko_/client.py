"""The state every part of the paramiko back end shares: the chain of hops, idle SFTP sessions, streams."""

from __future__ import annotations

import asyncio
from typing import Any

import paramiko

from ..base import Forward, NoPrompts, Prompts, SSHTarget, Transport
from ..kept_shell import KeptShell, ShellPipe


class Client(Transport):
    name = "paramiko"

    def __init__(self, target: SSHTarget, prompts: Prompts | None = None) -> None:
        self.target = target
        self.prompts = prompts or NoPrompts()
        self._hops: list[paramiko.Transport] = []  # jump hosts first, the target last
        self._idle: list[Any] = []  # SFTP sessions kept for reuse (copy._Session)
        self._channels: set[paramiko.Channel] = set()  # open streams, closed with the connection
        self._forwards: set[Forward] = set()
        self._proxies: list[Any] = []  # proxycommand.Proxy of the first hop, ended with the connection
        self._lock = asyncio.Lock()
        self._keys: dict[str, paramiko.PKey] = {}  # decrypted once per transport, in memory only
        self._shell = KeptShell(self._open_shell)  # short commands without a channel of their own

    async def _open_shell(self) -> ShellPipe:
        raise NotImplementedError  # the transport's

    @property
    def _stall_timeout(self) -> float:
        # Like asyncssh's keepalive_count_max=3: three missed keepalives and the connection is dead.
        return max(3 * self.target.keepalive_s, 10.0)

    def _alive(self) -> bool:
        return bool(self._hops) and all(t.is_active() for t in self._hops)

    def _detach(self) -> list[Any]:
        """Forget the connection; returns what to close (innermost first)."""
        self._shell.forget()  # its channel closes with the connection
        things: list[Any] = [*self._idle, *self._channels, *reversed(self._hops), *self._proxies]
        self._idle, self._hops, self._proxies = [], [], []
        self._channels = set()
        return things

    async def _connection(self) -> list[paramiko.Transport]:
        await self.connect()
        return self._hops
