"""The command's side of the keeper's socket: starting the keeper when none runs, connecting (checked), and
one request with its messages: login questions answered by the command's own Prompts, progress, the
result or a typed error."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..base import Progress, Prompts
from . import sockets, wire

START_TIMEOUT_S = 15.0


class KeeperGone(Exception):
    """The keeper's end closed in the middle of a request."""


class KeeperMismatch(sockets.KeeperUnavailable):
    """The running keeper cannot serve this command (another version, another HOME or ssh-agent)."""


# Started through a short-lived launcher, so the keeper is nobody's child: a long-lived caller (Blender)
# is left no zombie when the keeper leaves.
# On Windows it is detached from the console instead (the flags are 0 elsewhere).
_LAUNCHER = ("import subprocess, sys; subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, "
             "start_new_session=True, close_fds=True, creationflags=getattr(subprocess, 'DETACHED_PROCESS', 0) | "
             "getattr(subprocess, 'CREATE_NEW_PROCESS_GROUP', 0))")


def _start_keeper(directory: Path) -> None:
    """The keeper, detached from this command (a new session, no terminal), as local_queue starts its worker."""
    env = {**os.environ, "BRAAS_HPC_KEEPER_DIR": str(directory),
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # Blender's Python finds our wheels so
    fd = os.open(directory / "keeper.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        server = [sys.executable, "-m", "braas_hpc.core.transport.keeper.server"]
        subprocess.run([sys.executable, "-c", _LAUNCHER, *server],
                       stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, close_fds=True, cwd=directory, env=env,
                       timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise sockets.KeeperUnavailable(f"the keeper cannot be started: {exc}") from exc
    finally:
        os.close(fd)


async def open_connection(start: bool = True) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the keeper, checked (our socket, our uid), starting the keeper when none runs."""
    directory = sockets.private_dir()
    deadline = time.monotonic() + START_TIMEOUT_S
    started = False
    while True:
        try:
            return await sockets.connect_in(directory)
        except (sockets.KeeperNotRunning, FileNotFoundError, ConnectionRefusedError) as exc:
            if not start:
                raise sockets.KeeperNotRunning("no keeper is running") from exc
            if not started:
                _start_keeper(directory)
                started = True
            if time.monotonic() > deadline:
                raise sockets.KeeperUnavailable(f"the keeper did not start within {START_TIMEOUT_S:.0f} s "
                                                f"(see {directory / 'keeper.log'})") from exc
            await asyncio.sleep(0.02)


class Request:
    """One request on its own connection: its messages until `ok` or `error`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, prompts: Prompts,
                 progress: Progress | None = None) -> None:
        self.reader = reader
        self.writer = writer
        self.prompts = prompts
        self.progress = progress

    async def next(self) -> dict[str, Any]:
        """The next message that is not a question or a progress report."""
        while True:
            try:
                message = await wire.receive(self.reader)
            except (OSError, ValueError) as exc:
                raise KeeperGone(str(exc)) from exc
            if message is None:
                raise KeeperGone("the keeper closed the connection")
            if "ask" in message:
                await wire.send(self.writer, {"answer": await self._answer(message)})
            elif "progress" in message:
                if self.progress:
                    self.progress(*message["progress"])
            elif "error" in message:
                if message["error"].get("type") == "KeeperMismatch":
                    raise KeeperMismatch(message["error"].get("message", ""))
                raise wire.decode_error(message["error"])
            else:
                return message

    async def _answer(self, message: dict[str, Any]) -> Any:
        if message["ask"] == "passphrase":
            return await asyncio.to_thread(self.prompts.passphrase, str(message.get("key_file", "")))
        prompts = [(str(text), bool(echo)) for text, echo in message.get("prompts", [])]
        return await asyncio.to_thread(self.prompts.kbdint, str(message.get("name", "")),
                                       str(message.get("instructions", "")), prompts)

    async def result(self) -> dict[str, Any]:
        message = await self.next()
        if "ok" not in message:
            raise KeeperGone(f"unexpected keeper message: {sorted(message)}")
        return dict(message["ok"])

    def close(self) -> None:
        self.writer.close()


async def ask_keeper(op: str, start: bool = False) -> dict[str, Any]:
    """A request about the keeper itself (status, stop); KeeperNotRunning when none runs."""
    reader, writer = await open_connection(start)
    request = Request(reader, writer, _NoQuestions())
    try:
        await wire.send(writer, {"op": op})
        return await request.result()
    finally:
        request.close()


class _NoQuestions:
    def passphrase(self, key_file: str) -> str | None:
        return None

    def kbdint(self, name: str, instructions: str, prompts: list[tuple[str, bool]]) -> list[str] | None:
        return None
