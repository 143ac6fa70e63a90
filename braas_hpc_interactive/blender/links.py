"""The interactive add-on's live connections (no bpy): its loop, the tunnels it opened, the viewport
link and the latest frame, and the command output it follows.

Several threads meet here: the link's thread delivers frames, the loop thread streams output lines and
opens tunnels, Blender's main thread draws and polls. Everything shared sits behind one lock, and
nothing here touches bpy. Session tokens live in these objects only, never in Blender properties.
`close_all` (Stop and add-on unregister) ends every link and every tunnel.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from braas_hpc.addon_kit.bridge import Bridge
from braas_hpc.core.errors import UsageError

from ..core import live
from ..core.client import Frame, ViewportLink
from ..core.protocol import ViewRequest

CLOSE_TIMEOUT_S = 10.0
OUTPUT_LINES = 20
IDLE_AFTER_S = 3.0  # a frame not drawn for this long: no 3D view shows the remote render, pause the link

# The add-on's own asyncio loop, apart from braas_hpc's: tunnels live on it for hours, and disabling
# one add-on must not pull the connections from under the other.
loop = Bridge()


class Closable(Protocol):
    async def close(self) -> None: ...


@dataclass
class TunnelEntry:
    tunnel: Closable
    local_port: int  # 0 with a Unix socket
    node: str
    node_port: int
    token: str  # the session's secret: Python memory only
    local_path: str = ""  # the tunnel's Unix socket (mode 0600), where the OS has them

    @property
    def address(self) -> tuple[str, int]:
        """For RenderClient / open_view: a socket path (port unused) or 127.0.0.1 and the port."""
        return (self.local_path, 0) if self.local_path else ("127.0.0.1", self.local_port)

    @property
    def local_end(self) -> str:
        return "private socket" if self.local_path else f"127.0.0.1:{self.local_port}"


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.view: ViewportLink | None = None
        self.view_key = ""  # the session shown
        self.sent: ViewRequest | None = None
        self.script: str | None = None  # the last script handed to the link
        self.owner = 0  # the 3D view region whose view is sent; other views only show the frames
        self.generation = 0  # which link may store frames
        self.frame: Frame | None = None
        self.serial = 0  # counts frames, so a drawer knows when one is new
        self.tunnels: dict[str, TunnelEntry] = {}
        self.stoppers: list[threading.Thread] = []  # links saying goodbye without the UI waiting


_state = _State()


# ---- the viewport link


def _storer(generation: int) -> Callable[[Frame], None]:
    def store(frame: Frame) -> None:  # the link's thread
        with _state.lock:
            if _state.generation == generation:  # a closed link's last frame is not the new one's
                _state.frame = frame
                _state.serial += 1
    return store


def open_view(host: str, port: int, token: str | None, key: str = "", max_samples: int | None = None,
              owner: int = 0, link_factory: Callable[..., ViewportLink] = ViewportLink) -> ViewportLink:
    """Connect the viewport to a render server (replacing the current link); returns at once, the link's
    thread connects. `token` only for our built-in server (BlenderPhi has no handshake). `owner`: the
    region whose view counts (0: the first to draw), so two rendered 3D views do not take turns
    restarting the server's accumulation."""
    close_view(wait=False)
    with _state.lock:
        _state.generation += 1
        generation = _state.generation
    link = link_factory(host, port, token, _storer(generation), max_samples=max_samples, idle_after=IDLE_AFTER_S)
    with _state.lock:
        _state.view, _state.view_key, _state.sent, _state.frame, _state.script = link, key, None, None, None
        _state.owner = owner
        _state.serial += 1
    link.start()
    return link


def current() -> ViewportLink | None:
    with _state.lock:
        return _state.view


def view_key() -> str:
    with _state.lock:
        return _state.view_key if _state.view is not None else ""


def set_view(view: ViewRequest, owner: int = 0) -> bool:
    """Hand a view to the link only when it differs (frame aside) from the one it has and comes from the
    owning region; True if sent."""
    with _state.lock:
        link, sent = _state.view, _state.sent
        if link is None or (sent is not None and sent.same_view(view)):
            return False
        if owner and not _state.owner:
            _state.owner = owner
        if owner and owner != _state.owner:
            return False
        _state.sent = view
    link.set_view(view)
    return True


def set_script(text: str | None) -> bool:
    """Hand the link a script (sent once per change and connection); True if it differs from the last."""
    with _state.lock:
        link = _state.view
        if link is None or text is None or text == _state.script:
            return False
        _state.script = text
    link.set_script(text)
    return True


def drawn() -> None:
    """The engine drew the viewport (its view_draw): the link keeps rendering."""
    link = current()
    if link is not None:
        link.drawn()
        _say_fps(link)


_LIVE_EVERY_S = 2.0
_live_said = [0.0]


def _say_fps(link: ViewportLink) -> None:
    """Now and then, the frames per second received, for `braas-hpc dashboard` (core.live)."""
    now = time.monotonic()
    key = view_key()
    if now - _live_said[0] < _LIVE_EVERY_S or not key:
        return
    _live_said[0] = now
    with contextlib.suppress(OSError, UsageError):  # a key that is no session name, a full disk: not shown
        live.publish(key, fps=link.frames_per_second)


def latest() -> tuple[int, Frame | None]:
    with _state.lock:
        return _state.serial, _state.frame


def serial() -> int:
    with _state.lock:
        return _state.serial


def close_view(timeout: float = 5.0, wait: bool = True) -> bool:
    """Stop the viewport link (it says goodbye to the server); True if there was one. With wait=False
    the goodbye happens on a thread of its own: a server busy with a long sample must not freeze the UI."""
    with _state.lock:
        link, _state.view, _state.view_key, _state.sent, _state.frame = _state.view, None, "", None, None
        _state.script = None
        _state.generation += 1
        _state.serial += 1
    if link is None:
        return False
    if wait:
        link.stop(timeout)
    else:
        stopper = threading.Thread(target=link.stop, args=(timeout,), name="braas-render-stop", daemon=True)
        with _state.lock:
            _state.stoppers = [t for t in _state.stoppers if t.is_alive()] + [stopper]
        stopper.start()
    return True


# ---- tunnels (opened and closed on `loop`)


def add_tunnel(key: str, entry: TunnelEntry) -> TunnelEntry | None:
    """Record an open tunnel; returns the one it replaces (the caller closes it)."""
    with _state.lock:
        previous = _state.tunnels.get(key)
        _state.tunnels[key] = entry
    with contextlib.suppress(OSError, UsageError):
        live.publish(key, tunnel=entry.local_end)
        return previous


def tunnel(key: str) -> TunnelEntry | None:
    with _state.lock:
        return _state.tunnels.get(key)


def tunnels() -> dict[str, TunnelEntry]:
    with _state.lock:
        return dict(_state.tunnels)


async def close_tunnel(key: str) -> bool:
    """On the loop: close and forget the session's tunnel; True if there was one."""
    with _state.lock:
        entry = _state.tunnels.pop(key, None)
    if entry is None:
        return False
    with contextlib.suppress(OSError, UsageError):
        live.clear(key)
    await entry.tunnel.close()
    return True


def close_all(timeout: float = CLOSE_TIMEOUT_S) -> list[str]:
    """Close the viewport link and every tunnel, waiting for each; returns what could not be closed.
    Called from the main thread (Stop, unregister): the tunnels close on the loop, as they were opened."""
    problems: list[str] = []
    close_view()
    with _state.lock:
        stoppers, _state.stoppers = _state.stoppers, []
    for stopper in stoppers:
        stopper.join(timeout)
    for key in list(tunnels()):
        if not loop.running:  # no loop, no live tunnel: only the record is left
            with _state.lock:
                _state.tunnels.pop(key, None)
            continue
        operation = loop.run(f"Closing the tunnel of {key}", lambda key=key: close_tunnel(key), kind="tunnel")
        try:
            operation.result(timeout)
        except Exception as error:  # noqa: BLE001 - one stuck tunnel must not keep the others open
            problems.append(f"{key}: {error or type(error).__name__}")
            with _state.lock:
                _state.tunnels.pop(key, None)
    return problems


# ---- the followed command's output


class LineBuffer:
    """The last lines of a command's output: appended on the loop, copied by the main thread's timer."""

    def __init__(self, size: int = OUTPUT_LINES) -> None:
        self._lock = threading.Lock()
        self._lines: deque[str] = deque(maxlen=size)
        self._version = 0

    def append(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)
            self._version += 1

    def clear(self) -> None:
        with self._lock:
            self._lines.clear()
            self._version += 1

    def snapshot(self) -> tuple[int, list[str]]:
        with self._lock:
            return self._version, list(self._lines)


output = LineBuffer()


def describe_link(link: Any) -> str:
    """One status line for the panel."""
    if link is None:
        return "not viewing"
    if link.error and not link.connected:
        return link.error
    if not link.connected:
        return "connecting through the tunnel..." if link.host.startswith("/") else \
            f"connecting to {link.host}:{link.port}..."
    if link.paused:
        return f"paused: no 3D view shows it (Rendered mode resumes it) | Samples {link.samples}"
    return f"Samples {link.samples} | FPS {link.frames_per_second:.1f}"
