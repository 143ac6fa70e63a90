"""The render protocol (issue 9): wire structs and camera maths, the pure-Python client and ViewportLink
against a stand-in for BlenderPhi, and the built-in server rendering with real Cycles (the bpy wheel)."""

from __future__ import annotations

import importlib.util
import math
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from braas_hpc_interactive.core import protocol
from braas_hpc_interactive.core.client import Frame, RenderClient, ViewportLink
from braas_hpc_interactive.core.protocol import (
    CameraInfo,
    ConnectionClosed,
    HandshakeRefused,
    ProtocolError,
    ServerState,
    ViewRequest,
    expected_pixel_bytes,
    recv_acked,
    reset_request,
    send_acked,
    view_request_from_viewport,
)
from braas_hpc_interactive.node import SERVER_FILES
from tests.helpers import REPO


def install_server(directory: Path) -> Path:
    """The server as it is installed on a node: its files side by side in one directory."""
    directory.mkdir(parents=True, exist_ok=True)
    for source in SERVER_FILES:
        shutil.copy(source, directory / source.name)
    return directory / "render_server.py"

BPY_BLENDER = REPO / "braas_hpc" / "bpy_blender.py"
ROWS = ((1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 10.0))


def matrix(rows: tuple[tuple[float, ...], ...]) -> tuple[float, ...]:
    return tuple(x for row in rows for x in row)


# --------------------------------------------------------------------------------------------
# Wire format


def test_struct_sizes_and_round_trip() -> None:
    assert (protocol.VIEW_SIZE, protocol.STATE_SIZE) == (124, 40)
    view = ViewRequest(640, 360, frame=7, matrix=tuple(float(i) for i in range(12)), lens=0.75, clip_start=0.25,
                       clip_end=500.0, sensor_fit=2, shift_x=0.5, view_camera_zoom=3.0, view_camera_offset=(0.25, -0.5),
                       use_view_camera=True, orthographic=True)
    packed = view.pack()
    assert len(packed) == 124
    assert ViewRequest.unpack(packed) == view
    # Field offsets of the C struct: width 0, frame 12, matrix 16, lens 64, view_perspective 120.
    assert struct.unpack_from("<i", packed, 12)[0] == 7
    assert struct.unpack_from("<f", packed, 16 + 4 * 11)[0] == 11.0
    assert struct.unpack_from("<f", packed, 64)[0] == 0.75
    assert struct.unpack_from("<ii", packed, 116) == (1, 1)
    state = ServerState((-1.0, -2.0, -3.0), (1.0, 2.0, 3.0), (0.0, 0.0), 42, 12.5)
    assert len(state.pack()) == 40 and ServerState.unpack(state.pack()) == state
    assert expected_pixel_bytes(64, 36) == 64 * 36 * 8


def test_same_view_ignores_only_the_frame() -> None:
    view = ViewRequest(64, 36, matrix=matrix(ROWS), lens=0.8)
    assert view.same_view(replace(view, frame=99))
    assert not view.same_view(replace(view, lens=0.81))
    assert not view.same_view(replace(view, width=65))
    assert not view.same_view(replace(view, clip_start=0.2))
    assert not ViewRequest(1, 1, clip_start=0.0).same_view(ViewRequest(1, 1, clip_start=-0.0))  # bytes, not values


def test_reset_request_is_zeros_but_reset() -> None:
    assert reset_request().pack() == bytes(8) + struct.pack("<i", 1) + bytes(124 - 12)


def test_ack_framing_on_a_socket_pair() -> None:
    a, b = socket.socketpair()
    with a, b:
        done: list[bytes] = []
        receiver = threading.Thread(target=lambda: done.extend([recv_acked(b, 5), recv_acked(b, 0)]))
        receiver.start()
        send_acked(a, b"hello")
        send_acked(a, b"")  # an empty message still gets its ACK
        receiver.join(5)
        assert done == [b"hello", b""]
        b.sendall(b"\x01")
        with pytest.raises(ProtocolError, match="bad ACK"):
            send_acked(a, b"x")
        assert b.recv(1) == b"x"
        b.close()
        with pytest.raises(ConnectionClosed):
            recv_acked(a, 3)


def handshake_pair(client_token: str, server_token: str) -> tuple[object, object]:
    """Both sides of the handshake on a socket pair: (client's channel or exception, server's channel or None)."""
    a, b = socket.socketpair()
    a.settimeout(5)
    result: list[object] = []
    server = threading.Thread(target=lambda: result.append(protocol.server_handshake(b, server_token, 2.0)))
    server.start()
    try:
        client: object = protocol.client_handshake(a, client_token)
    except (ProtocolError, OSError) as err:
        client = err
        a.close()  # as RenderClient does: the server sees the close
    server.join(5)
    return client, result[0]


def test_mutual_handshake_and_authenticated_messages() -> None:
    token = secrets.token_hex(24)
    client, server = handshake_pair(token, token)
    assert isinstance(client, protocol.SecureChannel) and isinstance(server, protocol.SecureChannel)
    done: list[bytes] = []
    receiver = threading.Thread(target=lambda: done.extend([server.recv_acked(5), server.recv_acked(0)]))
    receiver.start()
    client.send_acked(b"hello")
    client.send_acked(b"")  # an empty message is authenticated and acknowledged too
    receiver.join(5)
    assert done == [b"hello", b""]
    # A message changed on the way, or an old one sent again, fails its check.
    tag = client._tag(b"C", client._sent, b"hello")
    client.sock.sendall(b"jello" + tag)
    with pytest.raises(protocol.AuthenticationFailed):
        server.recv(5)
    tag = client._tag(b"C", 0, b"hello")  # a replay of the first message
    client.sock.sendall(b"hello" + tag)
    with pytest.raises(protocol.AuthenticationFailed):
        server.recv(5)


def test_handshake_refuses_a_wrong_token_on_either_side() -> None:
    token = secrets.token_hex(24)
    for wrong in (token[:-1] + ("0" if token[-1] != "0" else "1"), token + "0"):
        client, server = handshake_pair(wrong, token)
        assert isinstance(client, HandshakeRefused) and "could not prove" in str(client)
        assert server is None
        client, server = handshake_pair(token, wrong)
        assert isinstance(client, HandshakeRefused) and server is None
    with pytest.raises(ValueError):
        protocol.client_handshake(socket.socketpair()[0], "not a token\n")


def test_a_server_without_the_token_learns_nothing() -> None:
    """Whoever listens in the server's place gets the hello only: no token, no proof, no request."""
    token = secrets.token_hex(24)
    a, b = socket.socketpair()
    with a, b:
        a.settimeout(5)
        b.sendall(os.urandom(64))  # a made-up nonce and proof
        with pytest.raises(HandshakeRefused, match="could not prove"):
            protocol.client_handshake(a, token)
        a.shutdown(socket.SHUT_WR)
        b.settimeout(5)
        heard = b""
        while chunk := b.recv(4096):
            heard += chunk
    assert heard.startswith(protocol.HANDSHAKE_MAGIC) and len(heard) == len(protocol.HANDSHAKE_MAGIC) + 32
    assert token.encode() not in heard


def test_a_silent_client_is_dropped_at_the_deadline() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert protocol.server_handshake(b, secrets.token_hex(24), 0.2) is None


# --------------------------------------------------------------------------------------------
# Camera maths (the BRaaS add-on's table, plain numbers)


def test_perspective_fov_across_the_shorter_side() -> None:
    # 72 mm sensor at 50 mm over a 1920x1080 region: tan(fov/2) = 36 / 50 / (1920/1080) = 0.405.
    view = view_request_from_viewport(ROWS, "PERSP", 1920, 1080, 50.0, 0.01, 1000.0, 10.0, frame=3)
    assert view.lens == pytest.approx(0.7696185, abs=1e-6)
    assert (view.width, view.height, view.frame) == (1920, 1080, 3)
    assert not view.orthographic and not view.use_view_camera
    assert (view.clip_start, view.clip_end, view.sensor_width, view.view_camera_zoom) == (0.01, 1000.0, 72.0, 1.0)
    assert view.matrix == matrix(ROWS)
    portrait = view_request_from_viewport(ROWS, "PERSP", 1080, 1920, 50.0, 0.01, 1000.0, 10.0)
    assert portrait.lens == view.lens
    tiny = view_request_from_viewport(ROWS, "PERSP", 0, -5, 50.0, 0.1, 10.0, 1.0)
    assert (tiny.width, tiny.height) == (1, 1)


def test_orthographic_extent_and_clip() -> None:
    view = view_request_from_viewport(ROWS, "ORTHO", 800, 600, 50.0, 0.01, 1000.0, 10.0)
    assert view.lens == pytest.approx(10.8)  # 72 * 10 / 50 / (800/600)
    assert (view.clip_start, view.clip_end, view.orthographic) == (-100.0, 100.0, True)
    near = view_request_from_viewport(ROWS, "ORTHO", 800, 600, 50.0, 0.01, 50.0, 10.0)
    assert (near.clip_start, near.clip_end) == (-25.0, 25.0)


def test_camera_view() -> None:
    cam = CameraInfo(type="PERSP", lens=50.0, clip_start=0.5, clip_end=80.0, sensor_width=36.0, sensor_height=24.0,
                     sensor_fit="VERTICAL", shift_x=0.1, shift_y=-0.2, view_camera_zoom=5.0,
                     view_camera_offset=(0.1, 0.2))
    view = view_request_from_viewport(ROWS, "CAMERA", 1000, 500, 20.0, 0.01, 1000.0, 10.0, camera=cam)
    assert view.lens == pytest.approx(0.6911112, abs=1e-6)  # 2 atan(36 / 50 / 2): the camera's lens, S = 72
    assert (view.clip_start, view.clip_end, view.sensor_width, view.sensor_height, view.sensor_fit) == \
        (0.5, 80.0, 36.0, 24.0, 2)
    assert (view.shift_x, view.shift_y, view.view_camera_zoom, view.view_camera_offset) == (0.1, -0.2, 5.0, (0.1, 0.2))
    assert view.use_view_camera and not view.orthographic


def test_ortho_camera_and_panoramic_camera() -> None:
    ortho = CameraInfo(type="ORTHO", ortho_scale=6.0, clip_start=0.1, clip_end=30.0)
    view = view_request_from_viewport(ROWS, "CAMERA", 1000, 500, 50.0, 0.01, 1000.0, 10.0, camera=ortho)
    assert view.lens == pytest.approx(6.0) and view.orthographic and view.use_view_camera  # 2 * 6 / 2
    with pytest.raises(ValueError, match="PANO"):
        view_request_from_viewport(ROWS, "CAMERA", 100, 100, 50.0, 0.1, 10.0, 1.0, camera=CameraInfo(type="PANO"))
    with pytest.raises(ValueError):
        view_request_from_viewport(ROWS, "CAMERA", 100, 100, 50.0, 0.1, 10.0, 1.0)


def load_server_module(directory: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("braas_render_server", install_server(directory))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_installed_server_imports_and_maps_the_camera(tmp_path: Path) -> None:
    """render_server.py finds protocol.py beside it (as installed on a node) and needs no Blender to import."""
    server = load_server_module(tmp_path / "node")
    assert server.bpy is None
    assert server.token_key("ab" * 24) == protocol.token_key("ab" * 24) and server.MAX_PENDING > 1
    assert server.check_token("") and "not set" in server.check_token("")
    assert server.check_token("ab" * 24) is None
    # Landscape: the height is the shorter side, so the sensor fits vertically; lens for a 36 mm sensor.
    setup = server.camera_setup(64, 36, matrix(ROWS), 2 * math.atan(0.8), 0.1, 100.0, False)
    assert setup.sensor_fit == "VERTICAL" and setup.lens_mm == pytest.approx(18 / 0.8)
    assert server.camera_setup(36, 64, matrix(ROWS), 1.0, 0.1, 100.0, False).sensor_fit == "HORIZONTAL"
    # Ortho clip planes behind the eye: the camera steps back along its +Z and the planes move with it.
    ortho = server.camera_setup(64, 36, matrix(ROWS), 12.0, -100.0, 100.0, True)
    assert ortho.ortho_scale == 12.0 and ortho.clip_start == pytest.approx(1e-3)
    assert ortho.clip_end == pytest.approx(200.001) and ortho.matrix_world[2][3] == pytest.approx(110.001)
    scaled = server.camera_setup(10, 10, (2, 0, 0, 1, 0, 3, 0, 2, 0, 0, 4, 3), 1.0, 0.1, 10.0, False)
    assert scaled.matrix_world == ((1, 0, 0, 1), (0, 1, 0, 2), (0, 0, 1, 3), (0, 0, 0, 1))
    with pytest.raises(server.BadRequest):
        server.camera_setup(10, 10, (0.0,) * 12, 1.0, 0.1, 10.0, False)


# --------------------------------------------------------------------------------------------
# A stand-in for BlenderPhi


def eventually(check: Callable[[], bool], timeout: float = 10.0, why: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out {why()}"
        time.sleep(0.01)


def _recv(conn: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class StandIn:
    """A protocol-level stand-in for BlenderPhi (we cannot run BlenderPhi here): the appendix's server
    checklist with no token, written independently of the client's code. It sends a solid colour, counts
    samples as BlenderPhi does, and records every request, script and ACK it sees. `drop_after` closes
    the first session abruptly after that many frames."""

    COLOUR = (0.25, 0.5, 0.75, 1.0)

    def __init__(self, drop_after: int | None = None, render_delay: float = 0.002) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=1)
        self.port = self.listener.getsockname()[1]
        self.drop_after = drop_after
        self.render_delay = render_delay
        self.requests: list[bytes] = []
        self.scripts: list[bytes] = []
        self.acks: list[bytes] = []
        self.events: list[str] = []
        self.sessions = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.listener.close()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.sessions += 1
            with conn:
                self.events.append(f"session {self.sessions}: {self.session(conn)}")

    def ack(self, conn: socket.socket, size: int) -> bytes | None:
        data = _recv(conn, size) if size else b""
        if data is not None:
            conn.sendall(b"\x00")
        return data

    def send(self, conn: socket.socket, data: bytes) -> bool:
        conn.sendall(data)
        answer = conn.recv(1)
        with self.lock:
            self.acks.append(answer)
        return answer == b"\x00"

    def session(self, conn: socket.socket) -> str:
        samples, frames, last_key, last_script = 0, 0, None, b""
        while True:
            raw = self.ack(conn, 124)
            if raw is None:
                return "eof"
            with self.lock:
                self.requests.append(raw)
            width, height, reset = struct.unpack_from("<3i", raw)
            if reset:
                return "reset"
            if width == 0 or height == 0:
                return "size 0"
            length_raw = self.ack(conn, 4)
            assert length_raw is not None
            (length,) = struct.unpack("<i", length_raw)
            script = self.ack(conn, length) if length > 0 else b""
            assert script is not None
            with self.lock:
                self.scripts.append(script)
            key = raw[:12] + raw[16:]
            if key != last_key or (script and script != last_script):
                samples = 0
            last_key, last_script = key, script or last_script
            samples += 1
            time.sleep(self.render_delay)
            pixel = np.array(self.COLOUR, dtype="<f2").tobytes()
            state = struct.pack("<3f3f2fif", -1, -1, -1, 1, 1, 1, 0, 0, samples, 100.0)
            if not (self.send(conn, pixel * width * height) and self.send(conn, state)):
                return "bad ack"
            frames += 1
            if self.drop_after is not None and self.sessions == 1 and frames == self.drop_after:
                return "dropped"


@pytest.fixture
def standin() -> Iterator[StandIn]:
    server = StandIn()
    yield server
    server.close()


def test_client_against_the_standin(standin: StandIn) -> None:
    view = ViewRequest(8, 4, matrix=matrix(ROWS), lens=0.8)
    with RenderClient("127.0.0.1", standin.port) as client:
        first = client.request(view)
        second = client.request(view.with_frame(5), script=b"<shader name='x'/>")
        third = client.request(view.with_frame(6))
        moved = client.request(replace(view, lens=0.9))
    assert len(first.pixels) == 8 * 4 * 8
    assert np.frombuffer(first.pixels, "<f2").reshape(-1, 4)[5].tolist() == list(StandIn.COLOUR)
    # Samples count up for the same view (frame ignored), restart on a new script and on a new view.
    assert [f.state.samples for f in (first, second, third, moved)] == [1, 1, 2, 1]
    assert first.state.bounds_lower == (-1.0, -1.0, -1.0) and first.elapsed > 0
    # Script length 0 means unchanged: the script went once, then nothing.
    assert standin.scripts == [b"", b"<shader name='x'/>", b"", b""]
    # Every pixel and state message was acknowledged with exactly one zero byte.
    assert standin.acks == [b"\x00"] * 8
    eventually(lambda: standin.events == ["session 1: reset"])
    assert standin.requests[-1] == reset_request().pack()


def test_client_refuses_requests_the_server_would_end_the_session_on(standin: StandIn) -> None:
    with RenderClient("127.0.0.1", standin.port) as client:
        for bad in (ViewRequest(0, 4), ViewRequest(4, 4, reset=1)):
            with pytest.raises(ValueError):
                client.request(bad)
        assert client.request(ViewRequest(2, 2)).state.samples == 1


def test_client_times_out_instead_of_hanging() -> None:
    with socket.create_server(("127.0.0.1", 0)) as mute:  # accepts (backlog), never answers
        client = RenderClient("127.0.0.1", mute.getsockname()[1], timeout=0.3)
        client.connect()
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            client.request(ViewRequest(2, 2))
        # Its own 0.3 s, not the default 30 s, with room for a loaded CI machine.
        assert time.monotonic() - started < 10 and not client.connected


# --------------------------------------------------------------------------------------------
# ViewportLink against the stand-in


@dataclass
class Collected:
    frames: list[Frame]
    errors: list[str]

    def wait_for(self, check: Callable[[], bool], timeout: float = 10.0) -> None:
        eventually(check, timeout, lambda: f"errors: {self.errors}")


def collecting_link(port: int, **kwargs: object) -> tuple[ViewportLink, Collected]:
    got = Collected([], [])
    link = ViewportLink("127.0.0.1", port, None, got.frames.append, got.errors.append, **kwargs)  # type: ignore[arg-type]
    return link, got


def test_link_delivers_frames_and_switches_views(standin: StandIn) -> None:
    link, got = collecting_link(standin.port)
    link.start()
    link.set_view(ViewRequest(4, 2, matrix=matrix(ROWS), lens=0.8))
    got.wait_for(lambda: len(got.frames) >= 3)
    assert link.connected and link.samples >= 3 and link.error is None
    link.set_view(ViewRequest(6, 3, matrix=matrix(ROWS), lens=0.5))
    got.wait_for(lambda: got.frames[-1].width == 6 and got.frames[-1].state.samples >= 2)
    assert len(got.frames[-1].pixels) == 6 * 3 * 8
    assert link.frames_per_second > 0
    link.stop()
    assert not link.connected
    eventually(lambda: standin.events == ["session 1: reset"])
    assert standin.requests[-1] == reset_request().pack()
    assert got.errors == []


def test_link_waits_at_max_samples(standin: StandIn) -> None:
    link, got = collecting_link(standin.port, max_samples=3)
    link.start()
    view = ViewRequest(4, 2, matrix=matrix(ROWS), lens=0.8)
    link.set_view(view)
    got.wait_for(lambda: link.samples == 3)
    time.sleep(0.3)
    assert len(standin.requests) == 3  # it stopped asking: no busy loop at the limit
    link.set_view(view.with_frame(9))  # same view for BlenderPhi: still nothing
    time.sleep(0.2)
    assert len(standin.requests) == 3
    link.set_view(replace(view, lens=0.7))
    got.wait_for(lambda: len(standin.requests) == 6 and link.samples == 3)
    link.stop()


def test_link_pauses_while_no_one_draws_its_frames(standin: StandIn) -> None:
    """A viewport switched out of Rendered mode stops drawing: the link stops asking the node for
    frames until the next draw (or a new view) instead of rendering for no one."""
    link, got = collecting_link(standin.port, idle_after=1.0)
    link.start()
    link.set_view(ViewRequest(4, 2, matrix=matrix(ROWS), lens=0.8))
    got.wait_for(lambda: len(got.frames) >= 1)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:  # a viewport redrawing at 20 Hz, for longer than idle_after
        link.drawn()
        assert not link.paused
        time.sleep(0.05)
    seen = len(got.frames)
    link.drawn()
    got.wait_for(lambda: len(got.frames) > seen)  # still asking after two seconds of draws
    got.wait_for(lambda: link.paused, timeout=10)  # the draws stopped: it pauses
    time.sleep(0.3)  # a request already on its way when it paused has arrived by now
    asked = len(standin.requests)
    time.sleep(0.5)
    assert len(standin.requests) == asked and link.paused  # no request while paused
    link.drawn()  # the viewport shows it again
    got.wait_for(lambda: len(standin.requests) > asked and not link.paused)
    link.drawn()
    link.stop()
    assert got.errors == []


def test_link_reconnects_after_a_drop() -> None:
    server = StandIn(drop_after=2)
    try:
        link, got = collecting_link(server.port)
        link.start()
        link.set_view(ViewRequest(4, 2, matrix=matrix(ROWS), lens=0.8))
        got.wait_for(lambda: server.sessions >= 2 and len(got.frames) >= 4)
        assert got.errors and "render server" in got.errors[0]
        assert link.connected and link.error is None  # cleared by the successful reconnect
        link.stop()
        eventually(lambda: server.events == ["session 1: dropped", "session 2: reset"])
    finally:
        server.close()


def test_link_reports_an_unreachable_server_and_stops_promptly() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nobody listens here
    link, got = collecting_link(port)
    link.start()
    link.set_view(ViewRequest(4, 2))
    got.wait_for(lambda: len(got.errors) >= 2)
    assert "cannot connect" in (link.error or "") and not link.connected
    started = time.monotonic()
    link.stop()
    # Not after stop()'s 5 s grace for a stuck request: the pause between attempts is interrupted.
    assert time.monotonic() - started < 4.0


# --------------------------------------------------------------------------------------------
# The built-in server: real Blender, real Cycles


@dataclass
class RunningServer:
    proc: subprocess.Popen[bytes]
    port: int
    token: str
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(scene: Path, directory: Path, token: str, *args: str) -> RunningServer:
    port = free_port()
    log = directory / f"server-{port}.err"
    env = {**os.environ, "BRAAS_HOST": "127.0.0.1", "BRAAS_PORT": str(port), "BRAAS_TOKEN": token}
    script = install_server(directory / "node")
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, str(BPY_BLENDER), "-b", str(scene), "-P", str(script), "--",
                                 *args], stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=directory)
    return RunningServer(proc, port, token, log)


def wait_listening(server: RunningServer, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while "listening on" not in server.text():
        assert server.proc.poll() is None, f"the server exited: {server.text()}"
        assert time.monotonic() < deadline, f"the server did not start: {server.text()}"
        time.sleep(0.05)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5):
        pass  # the port answers (an empty connection is refused at once)


def end_server(server: RunningServer) -> int:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(20)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(5)
    return server.proc.returncode


@pytest.fixture(scope="module")
def cycles_server(sample_scene: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_server(sample_scene, tmp_path_factory.mktemp("render_server"), secrets.token_hex(24))
    try:
        wait_listening(server)
        yield server
    finally:
        end_server(server)


def top_down(x: float, y: float, z: float, width: int, height: int, half_extent: float, ortho: bool = False,
             turned: bool = False) -> ViewRequest:
    """A camera looking straight down (-Z) from (x, y, z); `turned` rotates it 90 degrees about Z (its right
    is world +Y). half_extent: the shorter side's half-size on the floor (z = 0)."""
    rows = ((0.0, -1.0, 0.0, x), (1.0, 0.0, 0.0, y), (0.0, 0.0, 1.0, z)) if turned else \
        ((1.0, 0.0, 0.0, x), (0.0, 1.0, 0.0, y), (0.0, 0.0, 1.0, z))
    if ortho:
        return ViewRequest(width, height, matrix=matrix(rows), lens=2 * half_extent, clip_start=-100.0,
                           clip_end=100.0, orthographic=True)
    return ViewRequest(width, height, matrix=matrix(rows), lens=2 * math.atan(half_extent / z), clip_start=0.1,
                       clip_end=100.0)


def rgba(frame: Frame) -> np.ndarray:
    return np.frombuffer(frame.pixels, "<f2").astype(np.float32).reshape(frame.height, frame.width, 4)


def pixels_inside(lo: float, hi: float) -> tuple[int, int]:
    """First and last pixel whose centre lies within [lo, hi] (pixel i spans i..i+1)."""
    return math.ceil(lo - 0.5), math.floor(hi - 0.5)


def assert_floor_at(frame: Frame, columns: tuple[float, float], rows: tuple[float, float]) -> None:
    """The lit pixels sit where the floor's edges project to, give or take one pixel of filter and sampling."""
    expected = (*pixels_inside(*columns), *pixels_inside(*rows))
    got = lit_box(frame)
    assert all(abs(a - b) <= 1 for a, b in zip(got, expected, strict=True)), f"floor at {got}, expected {expected}"


def lit_box(frame: Frame) -> tuple[int, int, int, int]:
    """(first column, last column, first row, last row) of non-black pixels; rows counted from the bottom."""
    lit = rgba(frame)[..., :3].sum(axis=2) > 0.05
    rows, cols = np.nonzero(lit)
    assert rows.size, "nothing in view: the camera looks elsewhere"
    return int(cols.min()), int(cols.max()), int(rows.min()), int(rows.max())


def test_server_refuses_a_wrong_token(cycles_server: RunningServer) -> None:
    wrong = cycles_server.token[:-1] + ("0" if cycles_server.token[-1] != "0" else "1")
    with pytest.raises(HandshakeRefused):
        RenderClient("127.0.0.1", cycles_server.port, wrong, timeout=10).connect()
    with socket.create_connection(("127.0.0.1", cycles_server.port), timeout=10) as raw:
        # The old way, a token in clear followed by a request: closed without a byte of answer.
        raw.sendall(b"BRAAS-HPC-RENDER/1 " + wrong.encode() + b"\n" + ViewRequest(8, 8).pack() + struct.pack("<i", 0))
        try:
            answer = raw.recv(100)
        except ConnectionResetError:  # closed with our request unread
            answer = b""
        assert answer == b""  # closed, nothing rendered
    assert "refused" in cycles_server.text()


def test_server_renders_refines_and_resets(cycles_server: RunningServer) -> None:
    view = top_down(2.0, 1.0, 10.0, 64, 36, 8.0)
    with RenderClient("127.0.0.1", cycles_server.port, cycles_server.token) as client:
        first = client.request(view)
        second = client.request(view.with_frame(12))  # the frame alone is no change
        moved = client.request(top_down(1.0, -1.0, -1.0, 36, 64, 6.0, ortho=True, turned=True))
    assert len(first.pixels) == expected_pixel_bytes(64, 36)
    assert [first.state.samples, second.state.samples, moved.state.samples] == [1, 2, 1]
    image = rgba(second)
    assert np.isfinite(image).all() and image.min() >= 0 and image[..., 3].min() > 0.99  # opaque film
    reds = ((image[..., 0] > 0.5) & (image[..., 1] < 0.2)).sum()
    greens = ((image[..., 1] > 0.4) & (image[..., 0] < 0.2)).sum()
    assert reds > 30 and greens > 30 and image[..., :3].max() < 50  # the checker floor, scene-linear
    state = first.state
    assert state.bounds_lower == pytest.approx((-4, -4, 0)) and state.bounds_upper == pytest.approx((4, 4, 1.5))
    assert first.state.fps > 0
    # Where the 8x8 floor lands proves the camera mapping. Perspective, 64x36, FOV across the height:
    # half-extents 8 (vertical) and 8*64/36 (horizontal) on the floor; the camera at (2, 1) puts the floor's
    # x in [-6, 2] -> columns 18.5..36.5, and y in [-5, 3] -> rows 6.75..24.75 counted from the bottom
    # (a flipped image would put them at 11.25..29.25; a FOV across the width would shrink all by 1.8).
    assert_floor_at(second, (18.5, 36.5), (6.75, 24.75))
    # Orthographic 36x64 turned 90 degrees (right = +Y, up = -X) from BELOW the floor (z = -1, clip from
    # -100: the floor is behind the eye but inside the clip range): the width is the shorter side (12);
    # y + 1 in [-3, 5] -> columns 9..33 of 36; -(x - 1) in [-3, 5] -> rows 23..47 of 64.
    assert_floor_at(moved, (9.0, 33.0), (23.0, 47.0))
    assert not np.array_equal(image, rgba(first))  # the second pass refined the first
    assert not np.array_equal(rgba(moved)[:36, :36], image[:36, :36])
    eventually(lambda: "client said goodbye" in cycles_server.text())


def test_server_serves_the_next_client_after_one_leaves(cycles_server: RunningServer) -> None:
    view = top_down(0.0, 0.0, 10.0, 16, 16, 8.0)
    abrupt = RenderClient("127.0.0.1", cycles_server.port, cycles_server.token)
    abrupt.connect()
    assert abrupt.request(view).state.samples == 1
    abrupt._sock.close()  # type: ignore[union-attr]  # gone without the goodbye message
    for _ in range(2):
        with RenderClient("127.0.0.1", cycles_server.port, cycles_server.token, timeout=10) as client:
            assert client.request(view).state.samples == 1  # a new session starts over
            assert client.request(view, script=b"import os").state.samples == 1  # a script only resets
    assert cycles_server.text().count("script ignored") == 1


def test_a_silent_stranger_does_not_block_the_real_client(cycles_server: RunningServer) -> None:
    """An idle stranger connected first; the real client is served while the stranger is still connected
    (the server's log: the client's session starts before the stranger is refused), then the stranger is
    dropped without a byte."""
    with socket.create_connection(("127.0.0.1", cycles_server.port), timeout=15) as silent:
        stranger = f"127.0.0.1:{silent.getsockname()[1]}"
        with RenderClient("127.0.0.1", cycles_server.port, cycles_server.token, timeout=15) as client:
            mine = f"127.0.0.1:{client._sock.getsockname()[1]}"  # type: ignore[union-attr]
            assert client.request(top_down(0.0, 0.0, 10.0, 8, 8, 8.0)).state.samples == 1
        assert silent.recv(1) == b""  # dropped, nothing said
    eventually(lambda: f"refused {stranger}" in cycles_server.text())
    text = cycles_server.text()
    assert text.index(f"session start: {mine}") < text.index(f"refused {stranger}")


def test_server_refuses_to_start_without_a_token(sample_scene: Path, tmp_path: Path) -> None:
    server = start_server(sample_scene, tmp_path, "")
    assert server.proc.wait(60) != 0
    assert "BRAAS_TOKEN is not set" in server.text()


def test_server_gpu_without_a_gpu_and_sigterm(sample_scene: Path, tmp_path: Path) -> None:
    gpu = start_server(sample_scene, tmp_path, secrets.token_hex(24), "--device", "CUDA")
    server = start_server(sample_scene, tmp_path, secrets.token_hex(24), "--samples-per-step", "3")
    assert gpu.proc.wait(60) == 3 and "CUDA" in gpu.text() and "listening" not in gpu.text()
    wait_listening(server)
    with RenderClient("127.0.0.1", server.port, server.token) as client:
        view = top_down(0.0, 0.0, 10.0, 8, 8, 8.0)
        assert [client.request(view).state.samples for _ in range(2)] == [3, 6]
        assert end_server(server) == 0  # SIGTERM while a client is connected
    assert server.text().rstrip().endswith("stopped")
