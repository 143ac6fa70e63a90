"""Transports: asyncssh, paramiko and system OpenSSH behind one face, plus `local`.

`transport_for(preset)` hands out one live transport per (back end, host, user, port, jump chain)
and event loop, so every operation of a command (or of the add-on's loop) reuses one connection and
the user answers a passphrase or one-time code once.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from ..errors import PresetError
from ..presets import SSH_BACKENDS, Preset
from .base import (
    CommandResult,
    Forward,
    NoPrompts,
    Prompts,
    RemoteEntry,
    SSHTarget,
    StreamLine,
    Transport,
    quote_command,
)
from .keeper.client import KeptTransport
from .keeper.sockets import supported as keeper_supported
from .local import LocalTransport

__all__ = ["CommandResult", "Forward", "KeptTransport", "NoPrompts", "Prompts", "RemoteEntry", "SSHTarget",
           "StreamLine", "Transport", "TransportPool", "keep_seconds", "make_transport", "pool", "quote_command",
           "target_for", "transport_for"]


def target_for(preset: Preset) -> SSHTarget:
    return SSHTarget(
        host=preset.host,
        port=preset.port if preset.port != 22 else None,  # 22 is the default: let ~/.ssh/config say otherwise
        user=preset.user or None,
        key_files=(str(Path(preset.key_file).expanduser()),) if preset.key_file else (),
        known_hosts=preset.known_hosts or None,
        proxy_jump=preset.proxy_jump or None,
        ssh_config=preset.ssh_config or None,
    )


def make_transport(backend: str, target: SSHTarget, prompts: Prompts | None = None) -> Transport:
    """A new, unshared transport of the named back end (imported late: each needs its own library)."""
    if backend == "asyncssh":
        from .asyncssh_ import AsyncsshTransport

        return AsyncsshTransport(target, prompts)
    if backend == "paramiko":
        from .paramiko_ import ParamikoTransport

        return ParamikoTransport(target, prompts)
    if backend == "openssh":
        from .openssh import OpenSSHTransport

        return OpenSSHTransport(target, prompts)
    raise PresetError(f"ssh back end {backend!r} is not one of {', '.join(SSH_BACKENDS)}")


KEEPER_OFF = ("0", "off", "no", "false")


def keep_seconds(preset: Preset) -> float:
    """How long the connection keeper holds this preset's connection between commands; 0: it is not used
    (the preset says 0, BRAAS_HPC_KEEPER=off, or the system has no Unix sockets)."""
    if preset.is_local or os.environ.get("BRAAS_HPC_KEEPER", "").strip().lower() in KEEPER_OFF:
        return 0.0
    return preset.keep_connection_min * 60.0 if keeper_supported() else 0.0


class TransportPool:
    def __init__(self) -> None:
        self.prompts: Prompts = NoPrompts()
        self._live: dict[tuple[object, ...], Transport] = {}

    def get(self, preset: Preset, backend: str | None = None) -> Transport:
        if preset.is_local:
            return LocalTransport()
        chosen = backend or preset.ssh_backend
        target = target_for(preset)
        key = (id(asyncio.get_running_loop()), chosen, *target.key)
        if key not in self._live:
            self._live[key] = self._new(preset, chosen, target)
        return self._live[key]

    def dedicated(self, preset: Preset, backend: str, target: SSHTarget) -> Transport:
        """A transport for one long-lived user (the interactive tunnel), not shared within this process;
        with the keeper it still rides the kept connection, so it asks for no login of its own."""
        return self._new(preset, backend, target)

    def _new(self, preset: Preset, backend: str, target: SSHTarget) -> Transport:
        prompts = self.prompts
        keep_s = keep_seconds(preset)
        if keep_s:
            return KeptTransport(backend, target, prompts, keep_s, lambda: make_transport(backend, target, prompts))
        return make_transport(backend, target, prompts)

    async def close_all(self) -> None:
        """Close the transports of the running loop (the CLI calls this when a command ends)."""
        loop_id = id(asyncio.get_running_loop())
        for key in [k for k in self._live if k[0] == loop_id]:
            await self._live.pop(key).close()


pool = TransportPool()


def transport_for(preset: Preset, backend: str | None = None) -> Transport:
    return pool.get(preset, backend)
