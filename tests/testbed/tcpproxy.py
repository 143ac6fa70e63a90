"""A TCP proxy for fault and latency tests, run in-process.

    with running_proxy("127.0.0.1", 2222, delay_ms=20) as proxy:
        connect to 127.0.0.1:proxy.port ...   # ~40 ms added to every round trip

    with running_proxy("127.0.0.1", 2222, drop_after_bytes=1_000_000) as proxy:
        ...                                   # the transfer is cut after 1 MB client->server
        proxy.drop_after_bytes = None         # the next connection survives
        proxy.drop_all()                      # cut every open connection now

`netem` is not available on the test machines, hence a user-space proxy. A cut is abortive: both
sockets are closed with RST (SO_LINGER 0), so both ends see a reset rather than a clean EOF.
Only stdlib.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

CHUNK = 65536
QUEUE_CHUNKS = 64  # per direction: bounds memory when one side is slower than the other


class _Link:
    """One proxied connection: the client's and the target's stream writers, and its pumps."""

    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.client = client
        self.server = server
        self.tasks: list[asyncio.Task[None]] = []
        self.cut = False

    def abort(self) -> None:
        self.cut = True
        for writer in (self.client, self.server):
            _abort(writer)
        for task in self.tasks:
            task.cancel()


def _abort(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TcpProxy:
    """Listens on `listen_host` (a free port), forwards every connection to the target.

    `delay_ms`: one-way delay added to each chunk in each direction (read at every chunk).
    `drop_after_bytes`: cut a connection once that many bytes went client->server on it; read
    when a connection is accepted, so changing it affects the next connections only.
    Counters: `connections` accepted, `drops` cut by the proxy, `bytes_up`/`bytes_down` forwarded.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        drop_after_bytes: int | None = None,
        delay_ms: float = 0,
        listen_host: str = "127.0.0.1",
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.drop_after_bytes = drop_after_bytes
        self.delay_ms = delay_ms
        self.listen_host = listen_host
        self.port = 0
        self.connections = 0
        self.drops = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> int:
        """Connections open right now."""
        return len(self._links)

    # ---- asyncio API: call from the loop that runs the proxy

    async def start(self) -> int:
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._handle, self.listen_host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        links = list(self._links)
        for link in links:
            link.abort()
        await asyncio.gather(*(t for link in links for t in link.tasks), return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    # ---- thread API: the proxy's own event loop in a daemon thread

    def start_in_thread(self) -> int:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name=f"tcpproxy->{self.target_port}", daemon=True)
        self._thread.start()
        ready.wait()
        try:
            return asyncio.run_coroutine_threadsafe(self.start(), loop).result(10)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            raise

    def stop_thread(self) -> None:
        if self._thread is None or self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None

    def drop_all(self) -> int:
        """Cut every open connection now; returns how many. Callable from any thread."""

        def cut() -> int:
            links = list(self._links)
            for link in links:
                self._cut(link)
            return len(links)

        if self._loop is None:
            return 0
        try:
            in_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            in_loop = False
        if in_loop:
            return cut()

        async def cut_async() -> int:
            return cut()

        return asyncio.run_coroutine_threadsafe(cut_async(), self._loop).result(10)

    # ---- internals

    def _cut(self, link: _Link) -> None:
        if not link.cut:
            self.drops += 1
            link.abort()

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        limit = self.drop_after_bytes
        try:
            s_reader, s_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            _abort(c_writer)  # target down: the client sees a reset, as without a proxy
            return
        link = _Link(c_writer, s_writer)
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._pump(link, c_reader, s_writer, limit, upstream=True)),
            asyncio.create_task(self._pump(link, s_reader, c_writer, None, upstream=False)),
        ]
        try:
            await asyncio.gather(*link.tasks, return_exceptions=True)
        finally:
            self._links.discard(link)
            if not link.cut:
                for writer in (c_writer, s_writer):
                    writer.close()

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        limit: int | None,
        *,
        upstream: bool,
    ) -> None:
        """Copy one direction. Chunks go through a queue stamped with their arrival time, so a
        delay shifts every chunk by `delay_ms` without limiting throughput to one chunk per delay."""
        loop = asyncio.get_running_loop()
        # (arrival time, data); b"" is EOF (half-close), None "stop here" before a cut.
        queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue(QUEUE_CHUNKS)
        sender = asyncio.create_task(self._send(link, queue, writer, upstream))
        passed = 0
        try:
            while True:
                data = await reader.read(CHUNK)
                if limit is not None and passed + len(data) >= limit:
                    data = data[: limit - passed]
                    await queue.put((loop.time(), data))
                    await queue.put((loop.time(), None))
                    await sender  # what came before the limit still arrives, then the cut
                    self._cut(link)
                    return
                passed += len(data)
                await queue.put((loop.time(), data))
                if not data:  # EOF: forwarded as a half-close by the sender
                    await sender
                    return
        except (ConnectionError, OSError):
            self._cut_quietly(link)
        finally:
            if not sender.done():
                sender.cancel()

    async def _send(
        self,
        link: _Link,
        queue: asyncio.Queue[tuple[float, bytes | None]],
        writer: asyncio.StreamWriter,
        upstream: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                arrived, data = await queue.get()
                wait = arrived + self.delay_ms / 1000 - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is None:
                    return
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
                if upstream:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
        except (ConnectionError, OSError):
            self._cut_quietly(link)

    def _cut_quietly(self, link: _Link) -> None:
        """One side failed: close both, but this is not a drop made by the proxy."""
        if not link.cut:
            link.abort()


@contextlib.contextmanager
def running_proxy(
    target_host: str,
    target_port: int,
    *,
    drop_after_bytes: int | None = None,
    delay_ms: float = 0,
) -> Iterator[TcpProxy]:
    """A TcpProxy running in a background thread for the duration of the `with` block."""
    proxy = TcpProxy(target_host, target_port, drop_after_bytes=drop_after_bytes, delay_ms=delay_ms)
    proxy.start_in_thread()
    try:
        yield proxy
    finally:
        proxy.stop_thread()


__all__ = ["TcpProxy", "running_proxy"]
