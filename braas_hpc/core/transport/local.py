"""The `local` preset's transport: this computer, no SSH. Same face as the remote back ends."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from .base import CommandResult, Progress, RemoteEntry, Transport


def _atomic_copy(source: Path, target: Path, progress: Progress | None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.part")
    shutil.copyfile(source, temp)
    os.replace(temp, target)
    if progress:
        size = target.stat().st_size
        progress(size, size)


class LocalTransport(Transport):
    async def run(
        self, argv: Sequence[str], *, stdin: str | None = None, timeout: float | None = 300, check: bool = True
    ) -> CommandResult:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(
                process.communicate(stdin.encode() if stdin is not None else None), timeout
            )
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        result = CommandResult(
            tuple(argv), process.returncode, out.decode(errors="replace"), err.decode(errors="replace")
        )
        return result.check() if check else result

    async def put(self, local: Path, remote: str, progress: Progress | None = None) -> None:
        await asyncio.to_thread(_atomic_copy, local, Path(remote), progress)

    async def get(self, remote: str, local: Path, progress: Progress | None = None) -> None:
        await asyncio.to_thread(_atomic_copy, Path(remote), local, progress)

    async def listdir(self, remote: str) -> list[RemoteEntry]:
        try:
            with os.scandir(remote) as entries:
                return [RemoteEntry(e.name, e.stat().st_size) for e in entries if e.is_file(follow_symlinks=False)]
        except FileNotFoundError:
            return []
