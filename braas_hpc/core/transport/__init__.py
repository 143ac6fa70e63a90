"""Transports: asyncssh now; paramiko and system OpenSSH join behind the same face (issue 3)."""

from __future__ import annotations

from ..errors import PresetError
from ..presets import Preset
from .base import CommandResult, RemoteEntry, Transport, quote_command
from .local import LocalTransport

__all__ = ["CommandResult", "RemoteEntry", "Transport", "quote_command", "transport_for"]


def transport_for(preset: Preset) -> Transport:
    if preset.is_local:
        return LocalTransport()
    if preset.ssh_backend == "asyncssh":
        from .asyncssh_ import AsyncsshTransport  # imported late: the local preset needs no SSH library

        return AsyncsshTransport(preset)
    raise PresetError(f"preset {preset.name}: ssh_backend {preset.ssh_backend!r} is not available yet; use asyncssh")
