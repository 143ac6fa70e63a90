"""The asyncssh back end: one connection, commands over channels, files over SFTP.

Host keys are always verified against known_hosts (the preset's file, else ~/.ssh/known_hosts).
"""

from __future__ import annotations

import asyncio
import posixpath
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncssh

from ..errors import ConnectionFailed
from ..presets import Preset
from .base import CommandResult, Progress, RemoteEntry, Transport, quote_command

CONNECT_TIMEOUT_S = 30
KEEPALIVE_S = 30


def _connect_options(preset: Preset) -> dict[str, Any]:
    options: dict[str, Any] = {
        "port": preset.port,
        "connect_timeout": CONNECT_TIMEOUT_S,
        "keepalive_interval": KEEPALIVE_S,
    }
    if preset.user:
        options["username"] = preset.user
    if preset.key_file:
        options["client_keys"] = [str(Path(preset.key_file).expanduser())]
    if preset.known_hosts:
        # Left out, asyncssh reads ~/.ssh/known_hosts; either way an unknown host is refused.
        options["known_hosts"] = str(Path(preset.known_hosts).expanduser())
    return options


def _explain(preset: Preset, exc: BaseException) -> ConnectionFailed:
    where = f"{preset.user + '@' if preset.user else ''}{preset.host}:{preset.port} (preset {preset.name})"
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        known = preset.known_hosts or "~/.ssh/known_hosts"
        return ConnectionFailed(f"the host key of {where} is not trusted: it is not in {known} or does not match it")
    if isinstance(exc, asyncssh.PermissionDenied):
        key = preset.key_file or "your ssh-agent and default keys"
        return ConnectionFailed(f"{where} refused the login with {key}: {exc.reason}")
    if isinstance(exc, TimeoutError):
        return ConnectionFailed(f"no answer from {where} within {CONNECT_TIMEOUT_S} s")
    return ConnectionFailed(f"cannot connect to {where}: {exc}")


class AsyncsshTransport(Transport):
    def __init__(self, preset: Preset) -> None:
        self.preset = preset
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> asyncssh.SSHClientConnection:
        async with self._lock:
            if self._conn is None or self._conn.is_closed():
                self._sftp = None
                try:
                    self._conn = await asyncssh.connect(self.preset.host, **_connect_options(self.preset))
                except (OSError, asyncssh.Error, TimeoutError) as exc:
                    raise _explain(self.preset, exc) from exc
            return self._conn

    async def _sftp_client(self) -> asyncssh.SFTPClient:
        conn = await self._connection()
        if self._sftp is None:
            self._sftp = await conn.start_sftp_client()
        return self._sftp

    async def run(
        self, argv: Sequence[str], *, stdin: str | None = None, timeout: float | None = 300, check: bool = True
    ) -> CommandResult:
        conn = await self._connection()
        done = await conn.run(quote_command(argv), input=stdin, timeout=timeout, check=False)
        result = CommandResult(tuple(argv), done.exit_status, _text(done.stdout), _text(done.stderr))
        return result.check() if check else result

    async def put(self, local: Path, remote: str, progress: Progress | None = None) -> None:
        sftp = await self._sftp_client()
        await sftp.makedirs(posixpath.dirname(remote), exist_ok=True)
        temp = posixpath.join(posixpath.dirname(remote), f".{posixpath.basename(remote)}.part")
        await sftp.put(str(local), temp, progress_handler=_adapt(progress))
        await sftp.posix_rename(temp, remote)

    async def get(self, remote: str, local: Path, progress: Progress | None = None) -> None:
        sftp = await self._sftp_client()
        local.parent.mkdir(parents=True, exist_ok=True)
        temp = local.with_name(f".{local.name}.part")
        await sftp.get(remote, str(temp), progress_handler=_adapt(progress))
        temp.replace(local)

    async def listdir(self, remote: str) -> list[RemoteEntry]:
        sftp = await self._sftp_client()
        try:
            names = await sftp.readdir(remote)
        except asyncssh.SFTPNoSuchFile:
            return []
        return [
            RemoteEntry(n.filename, n.attrs.size or 0)
            for n in names
            if n.attrs.type == asyncssh.FILEXFER_TYPE_REGULAR
        ]

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            await self._conn.wait_closed()
            self._conn = None
            self._sftp = None


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def _adapt(progress: Progress | None) -> Any:
    if progress is None:
        return None
    return lambda _src, _dst, done, total: progress(done, total)
