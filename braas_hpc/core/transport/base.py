"""The transport face every back end shares: run a command, move files, list a directory.

A remote command is an argv list; `quote_command` is the one place it becomes a shell string.
"""

from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import RemoteCommandError

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


def quote_command(argv: Sequence[str]) -> str:
    """The single function that turns an argv list into a command line for the remote shell."""
    if not argv:
        raise ValueError("empty command")
    return shlex.join(argv)


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    exit_status: int | None
    stdout: str
    stderr: str

    def check(self) -> CommandResult:
        if self.exit_status != 0:
            raise RemoteCommandError(quote_command(self.argv), self.exit_status, self.stdout, self.stderr)
        return self


@dataclass(frozen=True)
class RemoteEntry:
    name: str
    size: int


class Transport(ABC):
    """One live connection to a cluster (or this computer). Use as `async with`."""

    @abstractmethod
    async def run(
        self, argv: Sequence[str], *, stdin: str | None = None, timeout: float | None = 300, check: bool = True
    ) -> CommandResult: ...

    @abstractmethod
    async def put(self, local: Path, remote: str, progress: Progress | None = None) -> None:
        """Copy a file; it appears under its final name only when complete (temp name + rename)."""

    @abstractmethod
    async def get(self, remote: str, local: Path, progress: Progress | None = None) -> None:
        """Copy a file back; the local file appears only when complete (temp name + rename)."""

    @abstractmethod
    async def listdir(self, remote: str) -> list[RemoteEntry]:
        """Regular files in a directory; an empty list when the directory does not exist."""

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> Transport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
