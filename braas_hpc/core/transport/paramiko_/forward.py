"""Port forwards: a local listener whose connections become direct-tcpip channels, copied by threads."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable

import paramiko

from ..base import Forward, make_private_socket, unlink_stale_socket
from .channels import DRAIN, SEND_BLOCK
from .connect import Connecting
from .threads import close_quietly, in_thread


class _Splice:
    """One tunnelled connection: a local socket and an SSH channel, copied both ways by two threads."""

    def __init__(self, conn: socket.socket, chan: paramiko.Channel, done: Callable[[_Splice], None]) -> None:
        self.conn = conn
        self.chan = chan
        self._done = done
        self._running = 2
        self._lock = threading.Lock()

    def start(self) -> None:
        # Blocking copies on both sides: each direction gets back-pressure from the slower end.
        threading.Thread(target=self._copy, args=(self.conn.recv, SEND_BLOCK, self.chan.sendall,
                                                  self.chan.shutdown_write), name="braas-paramiko-fwd",
                         daemon=True).start()
        threading.Thread(target=self._copy, args=(self.chan.recv, DRAIN, self.conn.sendall, self._local_eof),
                         name="braas-paramiko-fwd", daemon=True).start()

    def _local_eof(self) -> None:
        self.conn.shutdown(socket.SHUT_WR)

    def _copy(self, read: Callable[[int], bytes], size: int, write: Callable[[bytes], object],
              eof: Callable[[], object]) -> None:
        try:
            while data := read(size):
                write(data)
            eof()  # half-close: the other direction may still be sending
            failed = False
        except (OSError, EOFError, paramiko.SSHException):
            failed = True
        with self._lock:
            self._running -= 1
            finished = failed or self._running == 0
        if finished:
            self.close()

    def close(self) -> None:
        close_quietly(self.chan)
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_RDWR)
        close_quietly(self.conn)
        self._done(self)


class ParamikoForward(Forward):
    def __init__(self, owner: Forwards, listener: socket.socket, remote_host: str, remote_port: int,
                 local_path: str | None = None) -> None:
        self._owner = owner
        self._listener = listener
        self.local_path = local_path
        self.local_port = 0 if local_path else listener.getsockname()[1]
        self.remote_host = remote_host
        self.remote_port = remote_port
        self._splices: set[_Splice] = set()
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting = asyncio.create_task(self._accept())

    async def _accept(self) -> None:
        # A plain accept loop rather than asyncio streams: the copies run on blocking sockets in threads.
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(self._listener)
            except OSError:  # e.g. out of file descriptors: keep listening
                await asyncio.sleep(0.1)
                continue
            task = asyncio.create_task(self._tunnel(conn, peer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _tunnel(self, conn: socket.socket, peer: tuple[str, int] | str) -> None:
        origin = peer if isinstance(peer, tuple) else ("127.0.0.1", 0)  # a Unix socket's peer has no address
        try:
            chan = await self._owner._open_tunnel(self.remote_host, self.remote_port, origin)
        except asyncio.CancelledError:
            conn.close()
            raise
        except Exception:  # noqa: BLE001 - refused or unreachable: this one connection is closed
            conn.close()
            return
        conn.setblocking(True)
        if conn.family != getattr(socket, "AF_UNIX", None):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small lock-step messages go at once
        splice = _Splice(conn, chan, self._forget)
        with self._lock:
            self._splices.add(splice)
        splice.start()

    def _forget(self, splice: _Splice) -> None:
        with self._lock:
            self._splices.discard(splice)

    async def alive(self) -> bool:
        # Each tunnelled connection reconnects the transport when needed: the listener is what must live.
        return self._listener.fileno() != -1 and not self._accepting.done()

    async def close(self) -> None:
        self._accepting.cancel()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._accepting
        self._listener.close()
        with self._lock:
            splices = list(self._splices)
        for splice in splices:
            splice.close()
        self._owner._forwards.discard(self)


class Forwards(Connecting):
    """forward(): a TCP port or a private unix socket, tunnelled over the last hop."""

    async def forward(self, remote_host: str, remote_port: int, local_port: int | None = None,
                      local_path: str | None = None) -> Forward:
        await self._connection()  # fail here, not on the first connection through the tunnel
        if local_path:
            unlink_stale_socket(local_path)
        listener = socket.socket(socket.AF_UNIX if local_path else socket.AF_INET, socket.SOCK_STREAM)
        try:
            if local_path:
                listener.bind(local_path)
                make_private_socket(local_path)
            else:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind(("127.0.0.1", local_port or 0))
            listener.listen(128)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        forward = ParamikoForward(self, listener, remote_host, remote_port, local_path)
        self._forwards.add(forward)
        return forward

    async def _open_tunnel(self, remote_host: str, remote_port: int, peer: tuple[str, int]) -> paramiko.Channel:
        """A direct-tcpip channel from the last hop; reconnects first if the connection dropped."""
        hops = await self._connection()
        with self._mapped(hops):
            return await in_thread(hops[-1].open_channel, "direct-tcpip", (remote_host, remote_port), peer,
                                    None, None, self.target.connect_timeout, orphan=close_quietly)
