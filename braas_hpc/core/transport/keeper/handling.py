"""One client's connection to the keeper: its request run on a kept transport, its login questions and
their answers, and what a request holds open (a forward, a terminal session) until the client hangs up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ..base import Forward, Progress, StreamHandle, Transport
from . import wire

CLOSE_TIMEOUT_S = 10.0


class RelayPrompts:
    """The Prompts a kept transport asks: relayed to the client whose request is logging in. Called from
    the back end's worker threads, never from the keeper's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.asker: Client | None = None

    def _ask(self, message: dict[str, Any]) -> Any:
        asker = self.asker
        if asker is None:
            return None
        try:
            return asyncio.run_coroutine_threadsafe(asker.ask(message), self._loop).result()
        except Exception:  # noqa: BLE001 - the client went away: no answer, the login fails cleanly
            return None

    def passphrase(self, key_file: str) -> str | None:
        answer = self._ask({"ask": "passphrase", "key_file": key_file})
        return answer if isinstance(answer, str) else None

    def kbdint(self, name: str, instructions: str, prompts: list[tuple[str, bool]]) -> list[str] | None:
        answer = self._ask({"ask": "kbdint", "name": name, "instructions": instructions,
                            "prompts": [[text, echo] for text, echo in prompts]})
        ok = isinstance(answer, list) and all(isinstance(a, str) for a in answer)
        return answer if ok else None


class Client:
    """One connection: one request, its login questions and the answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.answers: asyncio.Queue[Any] = asyncio.Queue()
        self.gone = asyncio.Event()
        self.forward: Forward | None = None
        # A stream's input as it arrives (None: its end); the client keeps at most its window unacknowledged.
        self.input: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._ask_lock = asyncio.Lock()

    def write(self, message: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(wire.json_line(message))

    async def ask(self, message: dict[str, Any]) -> Any:
        async with self._ask_lock:  # one question at a time, answered in order
            if self.gone.is_set():
                return None
            self.write(message)
            return await self.answers.get()

    async def read_follow_ups(self) -> None:
        """Answers to questions, forward checks and a stream's input, until the client hangs up."""
        try:
            while (message := await wire.receive(self.reader)) is not None:
                if "answer" in message:
                    await self.answers.put(message["answer"])
                elif "alive" in message:
                    alive = self.forward is not None and await self.forward.alive()
                    self.write({"alive": alive})
                elif "write" in message:
                    self.input.put_nowait(await self.reader.readexactly(int(message["write"])))
                elif "write_eof" in message:
                    self.input.put_nowait(None)
        except (OSError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            self.gone.set()
            self.answers.put_nowait(None)


async def run_op(op: object, request: dict[str, Any], t: Transport, client: Client) -> None:
    def progress(done: int, total: int) -> None:  # copy threads call it too
        loop.call_soon_threadsafe(client.write, {"progress": [done, total]})

    loop = asyncio.get_running_loop()
    reply: dict[str, Any]
    if op == "connect":
        reply = {}
    elif op == "exec":
        status, out, err = await t._exec(request["command"], wire.decode_bytes(request.get("stdin")) or None,
                                         request.get("timeout"))
        reply = {"status": status, "stdout": wire.encode_bytes(out), "stderr": wire.encode_bytes(err)}
    elif op == "stream":
        reply = await _stream(request["command"], bool(request.get("stdin")), t, client)
    elif op == "size":
        reply = {"size": await t._size(request["remote"])}
    elif op == "send":
        await t._send(Path(request["local"]), request["remote"], int(request["offset"]), progress)
        reply = {}
    elif op == "receive":
        await t._receive(request["remote"], Path(request["local"]), int(request["offset"]), progress)
        reply = {}
    elif op == "batch":
        reply = await _batch(request["items"], t, client)
    elif op == "listdir":
        reply = {"entries": [[e.name, e.size, e.is_dir] for e in await t.listdir(request["remote"])]}
    elif op == "forward":
        client.forward = await t.forward(request["remote_host"], int(request["remote_port"]),
                                         request.get("local_port"), request.get("local_path"))
        await _hold(client, {"local_port": client.forward.local_port, "local_path": client.forward.local_path},
                    client.forward.close)
        return
    elif op == "hold":
        release = await t.hold_interactive()
        await _hold(client, {"held": release is not None}, release)
        return
    else:
        raise ValueError(f"unknown keeper request {op!r}")
    client.write({"ok": reply})


async def _batch(pairs: list[list[str]], t: Transport, client: Client) -> dict[str, Any]:
    """Files streamed through the kept connection's shell, written here by Transport.get_batch; progress
    goes to the client as [the file's place in the batch, bytes, size], written at once (get_batch reports
    on this loop, so every report goes before the reply)."""
    items = [(str(remote), Path(local)) for remote, local in pairs]
    index_of: dict[str, int] = {}
    for index, (remote, _) in enumerate(items):
        index_of.setdefault(remote, index)

    def each(remote: str) -> Progress:
        index = index_of[remote]
        return lambda done, total: client.write({"progress": [index, done, total]})

    return {"done": sorted(await t.get_batch(items, each))}


async def _stream(command: str, stdin: bool, t: Transport, client: Client) -> dict[str, Any]:
    handle = await t._open_stream(command, stdin)
    feeding = asyncio.create_task(_feed(handle, client)) if stdin else None
    try:
        client.write({"opened": True})
        async for line in handle.lines:
            client.write({"line": line.text, "stderr": line.stderr})
            await client.writer.drain()
        return {"status": await handle.wait()}
    finally:
        if feeding is not None:
            feeding.cancel()
            await asyncio.gather(feeding, return_exceptions=True)
        await handle.close()


async def _feed(handle: StreamHandle, client: Client) -> None:
    """The client's input into the stream, each frame acknowledged once the transport took it. After a
    failed write (the command stopped reading) every further frame is answered with that error."""
    assert handle.write is not None and handle.write_eof is not None
    failed: dict[str, Any] | None = None
    while True:
        data = await client.input.get()
        try:
            if data is None:
                if failed is None:
                    await handle.write_eof()
                client.write({"input_closed": True})
            elif failed is not None:
                client.write({"write_error": failed})
            else:
                await handle.write(data)
                client.write({"wrote": len(data)})
        except Exception as exc:  # noqa: BLE001 - typed, to the client's write
            failed = wire.encode_error(exc)
            client.write({"write_error": failed})


async def _hold(client: Client, reply: dict[str, Any], release: Callable[[], Awaitable[None]] | None) -> None:
    """Answer, then keep what was opened until the client hangs up (its `close`)."""
    client.write({"ok": reply})
    try:
        await client.gone.wait()
    finally:
        if release is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(asyncio.wait_for(release(), CLOSE_TIMEOUT_S))
