"""A pure-Python render client (standard library only): `RenderClient` speaks the BlenderPhi protocol one
frame at a time; `ViewportLink` drives it from a background thread for a viewport RenderEngine.

Unlike the reference client, every read has a timeout (Q8), connecting does not sleep first (Q7), and the
UI thread never waits on the network: the engine hands views to the link and gets frames back through a
callback.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .protocol import (
    SCRIPT_LEN_FORMAT,
    STATE_SIZE,
    Channel,
    ConnectionClosed,
    ProtocolError,
    ServerState,
    ViewRequest,
    client_handshake,
    expected_pixel_bytes,
    reset_request,
)

BACKOFF_MIN = 0.2
BACKOFF_MAX = 5.0
CLOSE_TIMEOUT = 2.0  # for the goodbye message: a dead server must not hold up closing
MAX_SCRIPT = 2**31 - 1


@dataclass(frozen=True)
class Frame:
    """One reply: `pixels` is W*H half-float RGBA, bottom row first, scene-linear, premultiplied."""

    width: int
    height: int
    pixels: bytes
    state: ServerState
    elapsed: float  # seconds from sending the request to having the state


def is_unix_path(host: str) -> bool:
    """A tunnel's Unix socket is given as its absolute path in place of a host name (port unused)."""
    return host.startswith("/")


def address_text(host: str, port: int) -> str:
    return host if is_unix_path(host) else f"{host}:{port}"


def open_socket(host: str, port: int, timeout: float) -> socket.socket:
    if not is_unix_path(host):
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # ACKs are 1-byte messages
        return sock
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(host)
    except BaseException:
        sock.close()
        raise
    return sock


class RenderClient:
    """One connection to a render server (BlenderPhi, or ours when `token` is given: then the server must
    prove it knows the token and every message is authenticated). `host` may be a Unix socket's path.
    Not thread-safe, except `abort()`, which may be called from another thread to break a blocked request."""

    def __init__(self, host: str, port: int, token: str | None = None, timeout: float = 30.0,
                 connect_timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.token = token
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._sock: socket.socket | None = None
        self._channel: Channel | None = None

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self) -> None:
        if self._sock is not None:
            return
        sock = open_socket(self.host, self.port, self.connect_timeout)
        try:
            sock.settimeout(self.timeout)
            channel = client_handshake(sock, self.token) if self.token is not None else Channel(sock)
        except BaseException:
            sock.close()
            raise
        self._sock, self._channel = sock, channel

    def request(self, view: ViewRequest, script: bytes | None = None) -> Frame:
        """One lock-step round: the view, the script (None or b"" = unchanged), then pixels and state.
        On any failure the connection is closed (its position in the stream is unknown) and the error raised."""
        sock, channel = self._sock, self._channel
        if sock is None or channel is None:
            raise ConnectionClosed("not connected")
        if view.reset or view.width <= 0 or view.height <= 0:
            raise ValueError("a frame request needs reset 0 and a positive size (the server would end the session)")
        payload = script or b""
        if len(payload) > MAX_SCRIPT:
            raise ValueError("script too long")
        started = time.monotonic()
        try:
            channel.send_acked(view.pack())
            channel.send_acked(struct.pack(SCRIPT_LEN_FORMAT, len(payload)))
            if payload:
                channel.send_acked(payload)
            pixels = channel.recv_acked(expected_pixel_bytes(view.width, view.height))
            state = ServerState.unpack(channel.recv_acked(STATE_SIZE))
        except BaseException:
            self._sock = self._channel = None
            sock.close()
            raise
        return Frame(view.width, view.height, pixels, state, time.monotonic() - started)

    def close(self) -> None:
        """Say goodbye (the reset message, best effort), then close."""
        sock, channel, self._sock, self._channel = self._sock, self._channel, None, None
        if sock is None or channel is None:
            return
        try:
            sock.settimeout(min(self.timeout, CLOSE_TIMEOUT))
            channel.send_acked(reset_request().pack())
        except (OSError, ProtocolError):
            pass
        finally:
            sock.close()

    def abort(self) -> None:
        """Break a request blocked in another thread (it then fails and closes the socket)."""
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> RenderClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ViewportLink:
    """Keeps frames coming for the latest view, on a daemon thread, reconnecting after errors.

    `on_frame` and `on_error` run on the link's thread: keep them short and do not touch bpy there
    (store the frame, let a timer on the main thread redraw). With `max_samples`, once the server's
    running total reaches it the link waits for another view instead of asking for more samples.
    With `idle_after`, a frame nobody drew (`drawn()`) for that many seconds pauses the link until
    the next draw or view: a viewport switched out of Rendered mode no longer keeps the node busy.
    """

    def __init__(self, host: str, port: int, token: str | None, on_frame: Callable[[Frame], None],
                 on_error: Callable[[str], None] | None = None, *, max_samples: int | None = None,
                 idle_after: float | None = None, timeout: float = 30.0, connect_timeout: float = 10.0,
                 fps_window: float = 2.0) -> None:
        self.host, self.port, self.token = host, port, token
        self._max_samples = max_samples
        self._idle_after = idle_after
        self._undrawn_since: float | None = None  # when a delivered frame was first left undrawn
        self._timeout, self._connect_timeout = timeout, connect_timeout
        self._on_frame, self._on_error = on_frame, on_error
        self._fps_window = max(1.0, fps_window)
        self._cond = threading.Condition()
        self._view: ViewRequest | None = None
        self._script: bytes | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._client: RenderClient | None = None
        self._connected = False
        self._error: str | None = None
        self._samples = 0
        self._frame_times: deque[float] = deque()
        self._first_frame: float | None = None

    # ---- called from the UI thread

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the link was already started")
        name = f"braas-render-{address_text(self.host, self.port)}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def set_view(self, view: ViewRequest) -> None:
        """The view to render from now on; a newer one replaces one not yet sent."""
        if view.reset or view.width <= 0 or view.height <= 0:
            raise ValueError("a view needs reset 0 and a positive size")
        with self._cond:
            self._view = view
            self._undrawn_since = None  # a new view comes from a viewport that is drawing
            self._cond.notify_all()

    def drawn(self) -> None:
        """The viewport drew (any frame): someone is looking, so keep the frames coming."""
        with self._cond:
            if self._undrawn_since is not None:
                self._undrawn_since = None
                self._cond.notify_all()

    def set_script(self, text: str | None) -> None:
        """Sent once per connection when it differs from the last one sent; None sends nothing (the
        protocol cannot clear a script on the server)."""
        with self._cond:
            self._script = None if text is None else text.encode("utf-8")
            self._cond.notify_all()

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread; it sends the reset message and closes. A request stuck longer than `timeout`
        is broken off."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        thread = self._thread
        if thread is None:
            return
        thread.join(timeout)
        if thread.is_alive():
            client = self._client
            if client is not None:
                client.abort()
            thread.join(1.0)

    @property
    def max_samples(self) -> int | None:
        return self._max_samples

    @max_samples.setter
    def max_samples(self, value: int | None) -> None:
        with self._cond:
            self._max_samples = value
            self._cond.notify_all()

    @property
    def connected(self) -> bool:
        with self._cond:
            return self._connected

    @property
    def paused(self) -> bool:
        """Waiting because no one drew the frames it delivered (see `idle_after`)."""
        with self._cond:
            return self._idle()

    @property
    def error(self) -> str | None:
        with self._cond:
            return self._error

    @property
    def samples(self) -> int:
        with self._cond:
            return self._samples

    @property
    def frames_per_second(self) -> float:
        """Frames received per second over the last `fps_window` seconds (at least 1 s)."""
        now = time.monotonic()
        with self._cond:
            self._trim(now)
            if self._first_frame is None:
                return 0.0
            span = min(self._fps_window, max(1.0, now - self._first_frame))
            return len(self._frame_times) / span

    # ---- the link's thread

    def _run(self) -> None:
        backoff = BACKOFF_MIN
        client: RenderClient | None = None
        sent_view: ViewRequest | None = None
        sent_script: bytes | None = None
        try:
            while True:
                if client is None:
                    client = self._connect()
                    if client is None:
                        if self._pause(backoff):
                            return
                        backoff = min(backoff * 2, BACKOFF_MAX)
                        continue
                    sent_view = sent_script = None
                job = self._next_job(sent_view, sent_script)
                if job is None:
                    return
                view, script = job
                try:
                    frame = client.request(view, script)
                except (OSError, ProtocolError) as err:
                    client = None  # request() closed it
                    self._report(f"render server {address_text(self.host, self.port)}: {err or type(err).__name__}",
                                 connected=False)
                    if self._pause(backoff):
                        return
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                backoff = BACKOFF_MIN
                sent_view = view
                sent_script = script or sent_script
                self._deliver(frame)
        finally:
            if client is not None:
                client.close()
            with self._cond:
                self._client = None
                self._connected = False

    def _connect(self) -> RenderClient | None:
        client = RenderClient(self.host, self.port, self.token, self._timeout, self._connect_timeout)
        with self._cond:
            if self._stopping:
                return None
            self._client = client
        try:
            client.connect()
        except (OSError, ProtocolError, ValueError) as err:
            where = address_text(self.host, self.port)
            self._report(f"cannot connect to the render server {where}: {err or type(err).__name__}",
                         connected=False)
            return None
        with self._cond:
            self._connected = True
            self._error = None
        return client

    def _next_job(self, sent_view: ViewRequest | None,
                  sent_script: bytes | None) -> tuple[ViewRequest, bytes | None] | None:
        """Wait until there is something worth asking for; None when stopping."""
        with self._cond:
            while not self._stopping:
                view = self._view
                if view is not None:
                    script = self._script if self._script and self._script != sent_script else None
                    changed = sent_view is None or not view.same_view(sent_view)
                    done = self._max_samples is not None and self._samples >= self._max_samples
                    if (changed or script is not None or not done) and not self._idle():
                        return view, script
                self._cond.wait()
        return None

    def _idle(self) -> bool:  # with the lock held
        return (self._idle_after is not None and self._undrawn_since is not None
                and time.monotonic() - self._undrawn_since > self._idle_after)

    def _pause(self, seconds: float) -> bool:
        """Sleep unless stopped; True when stopping."""
        with self._cond:
            return self._cond.wait_for(lambda: self._stopping, timeout=seconds)

    def _deliver(self, frame: Frame) -> None:
        now = time.monotonic()
        with self._cond:
            self._samples = frame.state.samples
            if self._undrawn_since is None:
                self._undrawn_since = now
            self._frame_times.append(now)
            if self._first_frame is None:
                self._first_frame = now
            self._trim(now)
        try:
            self._on_frame(frame)
        except Exception as err:  # the engine's bug must not end the link
            self._report(f"on_frame failed: {err!r}")

    def _trim(self, now: float) -> None:
        while self._frame_times and self._frame_times[0] < now - self._fps_window:
            self._frame_times.popleft()

    def _report(self, text: str, connected: bool | None = None) -> None:
        with self._cond:
            self._error = text
            if connected is not None:
                self._connected = connected
        if self._on_error is not None:
            try:
                self._on_error(text)
            except Exception:
                pass  # nothing sensible left to tell anyone
