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
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from ... import VERSION
from .. import make_transport
from ..base import SSHTarget, Transport
from . import sockets, wire
from .handling import CLOSE_TIMEOUT_S, Client, RelayPrompts, run_op

log = logging.getLogger("braas_hpc.keeper")
LEAVE_AFTER_S = 10.0  # nothing kept and no client this long: the process ends
CHECK_S = 1.0
LOCK_WAIT_S = 5.0  # a keeper that is just leaving holds the lock this long at most
# sshd allows 10 sessions on one connection by default (MaxSessions), counted across every command now
# sharing it: short requests beyond this many at once wait their turn instead of being refused. Streams
# and held sessions are long and few; the SFTP session and the OpenSSH back end's shell take two more.
SESSIONS_AT_ONCE = 6
QUEUED_OPS = frozenset({"exec", "send", "receive", "size", "listdir"})


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
    sessions: asyncio.Semaphore = dataclasses.field(default_factory=lambda: asyncio.Semaphore(SESSIONS_AT_ONCE))

    def describe(self) -> dict[str, Any]:
        t = self.target
        return {"backend": self.backend, "host": t.host, "port": t.port, "user": t.user or "",
                "proxy_jump": t.proxy_jump or "", "opened": self.opened, "busy": self.busy,
                "idle_s": round(time.monotonic() - self.last_used, 1), "keep_s": self.keep_s}


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
                    if op in QUEUED_OPS:
                        async with kept.sessions:
                            await run_op(op, request, transport, client)
                    else:
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
        differs = [k for k in wire.ENV_KEYS if k in theirs and (theirs[k] or "") != os.environ.get(k, "")]
        return f"the running keeper has another {', '.join(differs)}" if differs else ""

    # ---- life ----------------------------------------------------------------------------------

    async def run(self, listener: sockets.Listening) -> None:
        server = await listener.serve(self.handle)
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


def _lock_now(fd: int) -> None:
    """Lock the file without waiting; OSError when another process holds it."""
    if os.name == "nt":
        import msvcrt
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    else:
        import fcntl
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _take_lock(directory: Path) -> Any | None:
    """The keeper's lock, held for its life: one keeper per directory. None when another keeps it."""
    lock = os.fdopen(os.open(directory / "keeper.lock", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a")
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            _lock_now(lock.fileno())
            return lock
        except OSError:
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
    listener = sockets.Listening(directory)
    try:
        asyncio.run(Keeper().run(listener))
    finally:
        listener.remove()
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
