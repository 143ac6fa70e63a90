"""The BlenderPhi render protocol on the wire (no bpy): the two structs, ACK framing, our token handshake,
and the viewport camera maths that fills the request.

One TCP connection, strictly lock-step. Per frame the client sends a 124-byte `ViewRequest`, an int32
script length and (if > 0) the script; the server answers with W*H*8 bytes of half RGBA (bottom-up,
scene-linear, premultiplied) and a 40-byte `ServerState`. Every message is followed by a 1-byte ACK
(0x00) from its receiver, even an empty one. All little-endian. The handshake and the message tags are
ours: BlenderPhi has neither, so a client uses them only with our built-in server (docs/interactive.md).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

VIEW_FORMAT = "<4i12f5fi2f2ff2f2i"
STATE_FORMAT = "<3f3f2fif"
VIEW_SIZE = struct.calcsize(VIEW_FORMAT)  # 124
STATE_SIZE = struct.calcsize(STATE_FORMAT)  # 40
SCRIPT_LEN_FORMAT = "<i"
BYTES_PER_PIXEL = 8  # half RGBA, whatever the client would prefer (Q1)

# The add-on's constant "viewport sensor": Blender's 36 mm default doubled by the viewport's 2x zoom.
VIEWPORT_SENSOR = 72.0
ORTHO_CLIP_LIMIT = 200.0

HANDSHAKE_MAGIC = b"BRAAS-HPC-RENDER/2 "
HANDSHAKE_MAX_TOKEN = 128  # the node helper writes 48 hex characters
HANDSHAKE_TIMEOUT = 5.0  # for the whole handshake: a stranger's connection is dropped after this
NONCE_SIZE = 32
TAG_SIZE = 32  # HMAC-SHA256
ACK = b"\x00"

_FRAME_OFFSET = 12  # byte offset of `frame` (the 4th int): excluded from change detection


class ProtocolError(Exception):
    """The peer broke the protocol (bad ACK, bad handshake answer, impossible sizes)."""


class ConnectionClosed(ProtocolError):
    """The peer closed the connection where the protocol expected more bytes."""


class HandshakeRefused(ConnectionClosed):
    """No authenticated session: the server refused our proof, or could not prove it knows the token."""


class AuthenticationFailed(ProtocolError):
    """A message's tag did not match: changed, replayed, reordered, or from someone else."""


Matrix3x4 = tuple[float, float, float, float, float, float, float, float, float, float, float, float]
IDENTITY: Matrix3x4 = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass(frozen=True)
class ViewRequest:
    """`renderengine_data`: what the client wants rendered. `lens` is radians (perspective: the field of
    view across the shorter side) or world units (orthographic: the shorter side's extent), not mm."""

    width: int
    height: int
    reset: int = 0
    frame: int = 0
    matrix: tuple[float, ...] = IDENTITY  # camera-to-world, row-major 3x4, looking down its -Z
    lens: float = 0.0
    clip_start: float = 0.1
    clip_end: float = 1000.0
    sensor_width: float = VIEWPORT_SENSOR
    sensor_height: float = VIEWPORT_SENSOR
    sensor_fit: int = 0  # 0 AUTO, 1 HORIZONTAL, 2 VERTICAL (informative only)
    shift_x: float = 0.0
    shift_y: float = 0.0
    interocular: float = 0.0
    convergence: float = 0.0
    view_camera_zoom: float = 1.0
    view_camera_offset: tuple[float, float] = (0.0, 0.0)
    use_view_camera: bool = False
    orthographic: bool = False  # the wire's `view_perspective`: 1 = orthographic

    def pack(self) -> bytes:
        if len(self.matrix) != 12:
            raise ValueError(f"the camera matrix needs 12 floats, got {len(self.matrix)}")
        return struct.pack(
            VIEW_FORMAT, self.width, self.height, self.reset, self.frame, *self.matrix, self.lens, self.clip_start,
            self.clip_end, self.sensor_width, self.sensor_height, self.sensor_fit, self.shift_x, self.shift_y,
            self.interocular, self.convergence, self.view_camera_zoom, *self.view_camera_offset,
            int(self.use_view_camera), int(self.orthographic),
        )

    @classmethod
    def unpack(cls, data: bytes) -> ViewRequest:
        v = struct.unpack(VIEW_FORMAT, data)
        return cls(
            width=v[0], height=v[1], reset=v[2], frame=v[3], matrix=tuple(v[4:16]), lens=v[16], clip_start=v[17],
            clip_end=v[18], sensor_width=v[19], sensor_height=v[20], sensor_fit=v[21], shift_x=v[22],
            shift_y=v[23], interocular=v[24], convergence=v[25], view_camera_zoom=v[26],
            view_camera_offset=(v[27], v[28]), use_view_camera=v[29] != 0,
            orthographic=v[30] == 1,  # BlenderPhi: exactly 1 is orthographic, anything else perspective
        )

    def same_view(self, other: ViewRequest) -> bool:
        """BlenderPhi's change test: the packed bytes compared with `frame` left out (Q6)."""
        return _without_frame(self.pack()) == _without_frame(other.pack())

    def with_frame(self, frame: int) -> ViewRequest:
        return replace(self, frame=frame)


def _without_frame(packed: bytes) -> bytes:
    return packed[:_FRAME_OFFSET] + packed[_FRAME_OFFSET + 4:]


def reset_request() -> ViewRequest:
    """The goodbye message: every field zero but reset (the reference client leaves the rest as garbage)."""
    return ViewRequest(width=0, height=0, reset=1, frame=0, matrix=(0.0,) * 12, lens=0.0, clip_start=0.0,
                       clip_end=0.0, sensor_width=0.0, sensor_height=0.0, sensor_fit=0, view_camera_zoom=0.0)


@dataclass(frozen=True)
class ServerState:
    """`BRaaSHPCDataState`: sent after every frame. `samples` is the running total since the last reset;
    `fps` is the server's own 1/duration of its last step (not throughput)."""

    bounds_lower: tuple[float, float, float] = (0.0, 0.0, 0.0)
    bounds_upper: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scalars_range: tuple[float, float] = (0.0, 0.0)
    samples: int = 0
    fps: float = 0.0

    def pack(self) -> bytes:
        return struct.pack(STATE_FORMAT, *self.bounds_lower, *self.bounds_upper, *self.scalars_range,
                           self.samples, self.fps)

    @classmethod
    def unpack(cls, data: bytes) -> ServerState:
        v = struct.unpack(STATE_FORMAT, data)
        return cls(tuple(v[0:3]), tuple(v[3:6]), tuple(v[6:8]), v[8], v[9])  # type: ignore[arg-type]


def expected_pixel_bytes(width: int, height: int) -> int:
    """The pixel payload is always W*H*8, computed from the request (Q18)."""
    return width * height * BYTES_PER_PIXEL


# --------------------------------------------------------------------------------------------
# Framing


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """n bytes or ConnectionClosed; the socket's own timeout bounds every wait."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        count = sock.recv_into(view[got:], min(n - got, 1 << 24))
        if count == 0:
            raise ConnectionClosed(f"connection closed after {got} of {n} bytes")
        got += count
    return bytes(buf)


def send_acked(sock: socket.socket, data: bytes) -> None:
    """Send one message and wait for the receiver's 0x00 (also for an empty message)."""
    if data:
        sock.sendall(data)
    answer = sock.recv(1)
    if not answer:
        raise ProtocolError("connection closed while waiting for an ACK")
    if answer != ACK:
        raise ProtocolError(f"bad ACK {answer!r}")


def recv_acked(sock: socket.socket, n: int) -> bytes:
    """Receive one n-byte message and acknowledge it (the ACK goes out even for n == 0)."""
    data = recv_exactly(sock, n) if n else b""
    sock.sendall(ACK)
    return data


# --------------------------------------------------------------------------------------------
# Mutual handshake and authenticated messages (our built-in server only; BlenderPhi has neither)
#
# The token never crosses the wire. Client: HELLO + 32-byte nonce Nc. Server: its nonce Ns and
# HMAC(token, "server" Nc Ns), which proves it holds the token (a stranger listening on the port cannot
# answer, and the client then sends nothing more). Client: HMAC(token, "client" Nc Ns). Server: an ACK
# as the first authenticated message, or it closes. From then on every message of either side carries
# HMAC(key, side, sequence number, length, bytes), with key = HMAC(token, "session" Nc Ns): a changed,
# dropped, replayed or reordered message fails the check. Frames still travel in clear.


def _mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


def token_key(token: str) -> bytes:
    raw = token.encode("ascii", "replace")
    if not raw or len(raw) > HANDSHAKE_MAX_TOKEN or not raw.isalnum():
        raise ValueError("a session token is 1 to 128 letters or digits (the node helper writes 48 hex)")
    return raw


class Channel:
    """BlenderPhi's framing on a socket: each message acknowledged by one byte, nothing authenticated."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send_acked(self, data: bytes) -> None:
        send_acked(self.sock, data)

    def recv_acked(self, n: int) -> bytes:
        return recv_acked(self.sock, n)


class SecureChannel(Channel):
    """The same lock-step messages, each one (ACKs too) followed by its HMAC tag; a bad tag ends the session."""

    def __init__(self, sock: socket.socket, key: bytes, client: bool) -> None:
        super().__init__(sock)
        self._key = key
        self._out, self._in = (b"C", b"S") if client else (b"S", b"C")
        self._sent = self._received = 0

    def _tag(self, side: bytes, seq: int, data: bytes) -> bytes:
        return _mac(self._key, side, struct.pack("<QQ", seq, len(data)), data)

    def send(self, data: bytes) -> None:
        tag = self._tag(self._out, self._sent, data)
        self._sent += 1
        if len(data) < 65536:
            self.sock.sendall(data + tag)
        else:  # no copy of a frame just to append 32 bytes
            self.sock.sendall(data)
            self.sock.sendall(tag)

    def recv(self, n: int) -> bytes:
        raw = recv_exactly(self.sock, n + TAG_SIZE)
        data, tag = raw[:n], raw[n:]
        if not hmac.compare_digest(tag, self._tag(self._in, self._received, data)):
            raise AuthenticationFailed("a message failed its authentication check (changed or replayed on the way?)")
        self._received += 1
        return data

    def send_acked(self, data: bytes) -> None:
        self.send(data)
        answer = self.recv(1)
        if answer != ACK:
            raise ProtocolError(f"bad ACK {answer!r}")

    def recv_acked(self, n: int) -> bytes:
        data = self.recv(n)
        self.send(ACK)
        return data


def client_handshake(sock: socket.socket, token: str) -> SecureChannel:
    """Prove the token to a server that first proved it to us; the socket's timeout bounds each wait."""
    key = token_key(token)
    nonce_c = secrets.token_bytes(NONCE_SIZE)
    sock.sendall(HANDSHAKE_MAGIC + nonce_c)
    try:
        answer = recv_exactly(sock, NONCE_SIZE + TAG_SIZE)
    except (ConnectionClosed, ConnectionResetError):
        raise HandshakeRefused("the render server closed the connection at the handshake (not a braas-hpc "
                               "render server, or an older one?)") from None
    nonce_s, proof = answer[:NONCE_SIZE], answer[NONCE_SIZE:]
    if not hmac.compare_digest(proof, _mac(key, b"server", nonce_c, nonce_s)):
        raise HandshakeRefused("the render server could not prove it knows this session's token: a stale "
                               "token (was the command restarted?) or not our server on that port; nothing "
                               "was sent to it")
    sock.sendall(_mac(key, b"client", nonce_c, nonce_s))
    channel = SecureChannel(sock, _mac(key, b"session", nonce_c, nonce_s), client=True)
    try:
        accepted = channel.recv(1)
    except (ConnectionClosed, ConnectionResetError):
        raise HandshakeRefused("the render server closed the connection on our proof (wrong token?)") from None
    if accepted != ACK:
        raise ProtocolError(f"unexpected handshake answer {accepted!r}")
    return channel


def _recv_by(sock: socket.socket, n: int, deadline: float) -> bytes | None:
    """n bytes before the deadline, or None (silence, close or error)."""
    buf = b""
    while len(buf) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(n - len(buf))
        except OSError:  # the timeout included
            return None
        if not chunk:
            return None
        buf += chunk
    return buf


def server_handshake(sock: socket.socket, token: str, timeout: float = HANDSHAKE_TIMEOUT) -> SecureChannel | None:
    """The server's side, within one overall deadline: a channel for a client that proved the token, else
    None (the caller closes the connection without a word)."""
    key = token_key(token)
    deadline = time.monotonic() + timeout
    hello = _recv_by(sock, len(HANDSHAKE_MAGIC) + NONCE_SIZE, deadline)
    if hello is None or not hello.startswith(HANDSHAKE_MAGIC):
        return None
    nonce_c, nonce_s = hello[len(HANDSHAKE_MAGIC):], secrets.token_bytes(NONCE_SIZE)
    try:
        sock.sendall(nonce_s + _mac(key, b"server", nonce_c, nonce_s))
    except OSError:
        return None
    proof = _recv_by(sock, TAG_SIZE, deadline)
    if proof is None or not hmac.compare_digest(proof, _mac(key, b"client", nonce_c, nonce_s)):
        return None
    channel = SecureChannel(sock, _mac(key, b"session", nonce_c, nonce_s), client=False)
    channel.send(ACK)
    return channel


# --------------------------------------------------------------------------------------------
# Viewport camera -> request (the table of the BRaaS add-on, plain numbers in)

SENSOR_FITS = {"AUTO": 0, "HORIZONTAL": 1, "VERTICAL": 2}


@dataclass(frozen=True)
class CameraInfo:
    """The scene camera's settings that matter in camera view (Blender names and units)."""

    type: str = "PERSP"  # PERSP | ORTHO | PANO
    lens: float = 50.0  # mm
    ortho_scale: float = 6.0
    clip_start: float = 0.1
    clip_end: float = 100.0
    sensor_width: float = 36.0
    sensor_height: float = 24.0
    sensor_fit: str = "AUTO"
    shift_x: float = 0.0
    shift_y: float = 0.0
    view_camera_zoom: float = 0.0  # RegionView3D.view_camera_zoom, raw
    view_camera_offset: tuple[float, float] = (0.0, 0.0)


def perspective_fov(lens_mm: float, ratio: float) -> float:
    """Field of view (radians) across the shorter side for the 72 mm viewport sensor."""
    return 2.0 * math.atan(0.5 * VIEWPORT_SENSOR / lens_mm / ratio)


def view_request_from_viewport(
    view_matrix_inverse_rows: Sequence[Sequence[float]],
    perspective: str,
    region_width: int,
    region_height: int,
    lens_mm: float,
    clip_start: float,
    clip_end: float,
    view_distance: float,
    camera: CameraInfo | None = None,
    frame: int = 0,
) -> ViewRequest:
    """The request for a 3D view: `perspective` is RegionView3D.view_perspective, lens and clips are the
    SpaceView3D's, `view_distance` is RegionView3D.view_distance, `camera` is needed in camera view."""
    rows = [tuple(float(x) for x in row) for row in view_matrix_inverse_rows]
    if len(rows) < 3 or any(len(row) != 4 for row in rows[:3]):
        raise ValueError("the view matrix needs at least 3 rows of 4 floats")
    matrix = rows[0] + rows[1] + rows[2]
    width, height = max(1, int(region_width)), max(1, int(region_height))
    ratio = max(width, height) / min(width, height)
    base = ViewRequest(width=width, height=height, frame=frame, matrix=matrix)
    if perspective == "PERSP":
        return replace(base, lens=perspective_fov(lens_mm, ratio), clip_start=clip_start, clip_end=clip_end)
    if perspective == "ORTHO":
        depth = min(clip_end, ORTHO_CLIP_LIMIT)
        return replace(base, lens=VIEWPORT_SENSOR * view_distance / lens_mm / ratio, clip_start=-depth / 2,
                       clip_end=depth / 2, orthographic=True)
    if perspective != "CAMERA":
        raise ValueError(f"unknown view perspective {perspective!r} (PERSP, ORTHO or CAMERA)")
    if camera is None:
        raise ValueError("camera view needs the camera's settings")
    if camera.type == "PERSP":
        lens, ortho = perspective_fov(camera.lens, ratio), False
    elif camera.type == "ORTHO":
        # What the reference add-on meant (it crashes here, Q4): the frame is twice the camera's.
        lens, ortho = 2.0 * camera.ortho_scale / ratio, True
    else:
        raise ValueError(f"the remote render cannot show a {camera.type} camera (panoramic cameras are unsupported)")
    return replace(
        base, lens=lens, clip_start=camera.clip_start, clip_end=camera.clip_end, sensor_width=camera.sensor_width,
        sensor_height=camera.sensor_height, sensor_fit=SENSOR_FITS.get(camera.sensor_fit, 0),
        shift_x=camera.shift_x, shift_y=camera.shift_y, view_camera_zoom=camera.view_camera_zoom,
        view_camera_offset=camera.view_camera_offset, use_view_camera=True, orthographic=ortho,
    )
