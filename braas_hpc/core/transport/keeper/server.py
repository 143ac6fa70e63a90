"""The keeper process: owns the real transports, serves requests on its private socket, ends when idle.

    python -m braas_hpc.core.transport.keeper.server        (started by the first command that needs it)

One kept connection per (back end, where, who, which trust) as in a command's own pool. A login question
(passphrase, one-time code) is put to the client whose request opened the connection, answered by that
client's own prompts, and lives only in this process's memory. A kept connection unused for its preset's
idle time is closed; with none left and no client for a few seconds, the keeper leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ... import VERSION
from .. import make_transport
from ..base import Forward, SSHTarget, Transport
from . import sockets, wire

log = logging.getLogger("braas_hpc.keeper")
LEAVE_AFTER_S = 10.0  # nothing kept and no client this long: the process ends
CHECK_S = 1.0
LOCK_WAIT_S = 5.0  # a keeper that is just leaving holds the lock this long at most
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


@dataclasses.dataclass
class Kept:
    backend: str
    target: SSHTarget
    transport: Transport
    relay: RelayPrompts
    keep_s: float
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    opened: float = dataclasses.field(default_factory=time.time)
    last_used: float = dataclasses.field(default_factory=time.monotonic)
    busy: int = 0  # requests running on it, forwards and held sessions included

    def describe(self) -> dict[str, Any]:
        t = self.target
        return {"backend": self.backend, "host": t.host, "port": t.port, "user": t.user or "",
                "proxy_jump": t.proxy_jump or "", "opened": self.opened, "busy": self.busy,
                "idle_s": round(time.monotonic() - self.last_used, 1), "keep_s": self.keep_s}


class Client:
    """One connection: one request, its login questions and the answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.answers: asyncio.Queue[Any] = asyncio.Queue()
        self.gone = asyncio.Event()
        self.forward: Forward | None = None
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
        """Answers to questions and forward checks, until the client hangs up."""
        try:
            while (message := await wire.receive(self.reader)) is not None:
                if "answer" in message:
                    await self.answers.put(message["answer"])
                elif "alive" in message:
                    alive = self.forward is not None and await self.forward.alive()
                    self.write({"alive": alive})
        except (OSError, ValueError):
            pass
        finally:
            self.gone.set()
            self.answers.put_nowait(None)


class Keeper:
    def __init__(self) -> None:
        self.kept: dict[tuple[object, ...], Kept] = {}
        self.clients = 0
        self.quiet_since = time.monotonic()
        self.stopping = asyncio.Event()

    # ---- connections ---------------------------------------------------------------------------

    def _kept_for(self, request: dict[str, Any]) -> Kept:
        backend = str(request["backend"])
        target = target_from(request["target"])
        key = (backend, *target.key)
        if key not in self.kept:
            relay = RelayPrompts(asyncio.get_running_loop())
            self.kept[key] = Kept(backend, target, make_transport(backend, target, relay), relay,
                                  float(request["keep_s"]))
            log.info("keeping %s connection to %s@%s:%s", backend, target.user or "", target.host, target.port or 22)
        kept = self.kept[key]
        kept.keep_s = float(request["keep_s"])  # the preset's latest word
        return kept

    async def _connected(self, kept: Kept, client: Client) -> Transport:
        async with kept.lock:  # one login at a time; its questions go to this client
            kept.relay.asker = client
            try:
                await kept.transport.connect()
            finally:
                kept.relay.asker = None
        return kept.transport

    async def expire(self) -> None:
        now = time.monotonic()
        for key, kept in list(self.kept.items()):
            if kept.busy == 0 and now - kept.last_used > kept.keep_s:
                del self.kept[key]
                log.info("closing the %s connection to %s (idle %.0f s)", kept.backend, kept.target.host,
                         now - kept.last_used)
                await close_quietly(kept.transport)

    async def close_all(self) -> None:
        kept, self.kept = list(self.kept.values()), {}
        await asyncio.gather(*(close_quietly(k.transport) for k in kept))

    # ---- requests ------------------------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients += 1
        client = Client(reader, writer)
        try:
            sockets.check_peer(writer.get_extra_info("socket"))
            request = await wire.receive(reader)
            if request is None:
                return
            follow = asyncio.create_task(client.read_follow_ups())
            work = asyncio.create_task(self.serve(request, client))
            gone = asyncio.create_task(client.gone.wait())
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            for task in (work, gone, follow):  # a client that hangs up cancels its request
                task.cancel()
            await asyncio.gather(work, gone, follow, return_exceptions=True)
        except (sockets.KeeperUnavailable, OSError, ValueError) as exc:
            log.warning("refused a client: %s", exc)
        finally:
            self.clients -= 1
            self.quiet_since = time.monotonic()
            writer.close()

    async def serve(self, request: dict[str, Any], client: Client) -> None:
        op = request.get("op")
        try:
            if op == "status":
                client.write({"ok": {"pid": os.getpid(), "version": VERSION,
                                     "kept": [k.describe() for k in self.kept.values()]}})
            elif op == "stop":
                client.write({"ok": {"closed": len(self.kept)}})
                await client.writer.drain()
                self.stopping.set()
            elif mismatch := self._mismatch(request):
                client.write({"error": {"type": "KeeperMismatch", "message": mismatch}})
            else:
                kept = self._kept_for(request)
                kept.busy += 1
                try:
                    transport = await self._connected(kept, client)
                    await run_op(op, request, transport, client)
                finally:
                    kept.busy -= 1
                    kept.last_used = time.monotonic()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the client, typed
            client.write({"error": wire.encode_error(exc)})
        with contextlib.suppress(OSError):
            await client.writer.drain()

    @staticmethod
    def _mismatch(request: dict[str, Any]) -> str:
        if request.get("protocol") != wire.PROTOCOL or request.get("version") != VERSION:
            return f"the running keeper is braas-hpc {VERSION} (protocol {wire.PROTOCOL})"
        theirs = request.get("env") or {}
        differs = [k for k in wire.ENV_KEYS if (theirs.get(k) or "") != os.environ.get(k, "")]
        return f"the running keeper has another {', '.join(differs)}" if differs else ""

    # ---- life ----------------------------------------------------------------------------------

    async def run(self, listener: Any) -> None:
        server = await sockets.serve(self.handle, listener)
        log.info("keeper %s listening (pid %d)", VERSION, os.getpid())
        try:
            while not self.stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), CHECK_S)
                await self.expire()
                if not self.kept and self.clients == 0 and time.monotonic() - self.quiet_since > LEAVE_AFTER_S:
                    break
        finally:
            server.close()
            await self.close_all()
            log.info("keeper leaves")


def target_from(data: dict[str, Any]) -> SSHTarget:
    fields = {f.name for f in dataclasses.fields(SSHTarget)}
    values = {k: v for k, v in data.items() if k in fields}
    values["key_files"] = tuple(values.get("key_files") or ())
    return SSHTarget(**values)


async def close_quietly(transport: Transport) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(transport.close(), CLOSE_TIMEOUT_S)


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
        reply = await _stream(request["command"], t, client)
    elif op == "size":
        reply = {"size": await t._size(request["remote"])}
    elif op == "send":
        await t._send(Path(request["local"]), request["remote"], int(request["offset"]), progress)
        reply = {}
    elif op == "receive":
        await t._receive(request["remote"], Path(request["local"]), int(request["offset"]), progress)
        reply = {}
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


async def _stream(command: str, t: Transport, client: Client) -> dict[str, Any]:
    handle = await t._open_stream(command)
    try:
        async for line in handle.lines:
            client.write({"line": line.text, "stderr": line.stderr})
            await client.writer.drain()
        return {"status": await handle.wait()}
    finally:
        await handle.close()


async def _hold(client: Client, reply: dict[str, Any], release: Callable[[], Awaitable[None]] | None) -> None:
    """Answer, then keep what was opened until the client hangs up (its `close`)."""
    client.write({"ok": reply})
    try:
        await client.gone.wait()
    finally:
        if release is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(asyncio.wait_for(release(), CLOSE_TIMEOUT_S))


def _take_lock(directory: Path) -> Any | None:
    """The keeper's lock, held for its life: one keeper per directory. None when another keeps it."""
    lock = open(directory / "keeper.lock", "a")  # noqa: SIM115 - held until the process ends
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock
        except BlockingIOError:
            if time.monotonic() > deadline:
                lock.close()
                return None
            time.sleep(0.1)


def main() -> int:
    directory = sockets.private_dir()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    lock = _take_lock(directory)
    if lock is None:
        return 0  # another keeper serves this directory
    path = directory / sockets.SOCKET_NAME
    listener = sockets.listening_socket(path)
    try:
        asyncio.run(Keeper().run(listener))
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # still under the lock: no newer keeper listens there yet
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
