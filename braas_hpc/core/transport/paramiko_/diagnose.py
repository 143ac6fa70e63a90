"""paramiko's and the socket's failures as typed errors; a broken connection is forgotten for a reconnect."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import paramiko

from ...errors import ConnectionFailed, ConnectionLost
from .client import Client
from .threads import close_later


def why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class Diagnosing(Client):
    """Maps paramiko and socket errors to ConnectionLost and ConnectionFailed."""

    def _lost(self, exc: BaseException, hops: list[paramiko.Transport]) -> ConnectionLost:
        """Forget the broken chain (unless a reconnect already replaced it); the next call connects again."""
        if hops is self._hops:
            close_later(self._detach())
        return ConnectionLost(f"the connection to {self.target.host} dropped: {why(exc)}")

    @contextlib.contextmanager
    def _mapped(self, hops: list[paramiko.Transport]) -> Iterator[None]:
        """paramiko and socket errors during an operation as our errors; SFTP status errors pass."""
        try:
            yield
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if not all(t.is_active() for t in hops) or isinstance(exc, EOFError | ConnectionError) or (
                    isinstance(exc, paramiko.SSHException) and not isinstance(exc, paramiko.ChannelException)):
                raise self._lost(exc, hops) from exc
            if isinstance(exc, paramiko.ChannelException):
                raise ConnectionFailed(f"{self.target.host} refused a channel: {why(exc)}") from exc
            raise  # FileNotFoundError, PermissionError, TimeoutError...: the connection is fine
