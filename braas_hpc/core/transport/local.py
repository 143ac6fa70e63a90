"""The `local` preset's transport: this computer, no SSH. Same face as the remote back ends."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

from .base import (
    Forward,
    Progress,
    RemoteEntry,
    StreamHandle,
    Transport,
    make_private_socket,
    merge_lines,
    pipe_writer,
    unlink_stale_socket,
)

COPY_BLOCK = 1 << 20


def _copy(source: Path, target: Path, offset: int, progress: Progress | None) -> None:
    total = source.stat().st_size
    with source.open("rb") as src, target.open("r+b" if offset and target.exists() else "wb") as out:
        src.seek(offset)
        out.seek(offset)
        out.truncate()
        position = offset
        while chunk := src.read(COPY_BLOCK):
            out.write(chunk)
            position += len(chunk)
            if progress:
                progress(position, total)


class _LocalForward(Forward):
    """A plain TCP relay on 127.0.0.1, so interactive features work the same on the local preset."""

    def __init__(self, server: asyncio.Server, remote_host: str, remote_port: int,
                 local_path: str | None = None) -> None:
        self._server = server
        self.local_path = local_path
        self.local_port = 0 if local_path else server.sockets[0].getsockname()[1]
        self.remote_host = remote_host
        self.remote_port = remote_port

    async def close(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def alive(self) -> bool:
        return self._server.is_serving()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


class LocalTransport(Transport):
    name = "local"

    async def connect(self) -> None:
        return None

    async def _exec(self, command: str, stdin: bytes | None, timeout: float | None
                    ) -> tuple[int | None, bytes, bytes]:
        process = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        return process.returncode, out, err

    async def _open_stream(self, command: str, stdin: bool = False) -> StreamHandle:
        process = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command, stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None and process.stderr is not None
        lines, stop = merge_lines(process.stdout, process.stderr)

        async def close() -> None:
            stop()
            if process.returncode is None:
                process.kill()
                await process.wait()

        if not stdin:
            return StreamHandle(lines, process.wait, close)
        return StreamHandle(lines, process.wait, close, *pipe_writer(process, "the command stopped reading"))

    async def _size(self, remote: str) -> int | None:
        try:
            return os.stat(remote).st_size
        except FileNotFoundError:
            return None

    async def _send(self, local: Path, remote: str, offset: int, progress: Progress | None) -> None:
        Path(remote).parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(_copy, local, Path(remote), offset, progress)

    async def _receive(self, remote: str, local: Path, offset: int, progress: Progress | None) -> None:
        await asyncio.to_thread(_copy, Path(remote), local, offset, progress)

    async def listdir(self, remote: str) -> list[RemoteEntry]:
        try:
            with os.scandir(remote) as entries:
                return [RemoteEntry(e.name, e.stat().st_size if e.is_file() else 0, e.is_dir(follow_symlinks=False))
                        for e in entries if e.is_file(follow_symlinks=False) or e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return []

    async def forward(self, remote_host: str, remote_port: int, local_port: int | None = None,
                      local_path: str | None = None) -> Forward:
        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection(remote_host, remote_port)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True)

        if local_path:
            unlink_stale_socket(local_path)
            server = await asyncio.start_unix_server(relay, local_path)
            make_private_socket(local_path)
            return _LocalForward(server, remote_host, remote_port, local_path)
        server = await asyncio.start_server(relay, "127.0.0.1", local_port or 0, family=socket.AF_INET)
        return _LocalForward(server, remote_host, remote_port)
