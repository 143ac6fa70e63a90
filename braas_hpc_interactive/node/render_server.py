"""The built-in render server: stock Blender with real Cycles, speaking the BlenderPhi protocol.

    blender -b scene.blend -P render_server.py -- [--device CPU|CUDA|OPTIX|HIP|ONEAPI] [--samples-per-step N]

Runs as an interactive session's command on the compute node. The node helper exports BRAAS_HOST,
BRAAS_PORT and BRAAS_TOKEN; without a token the server refuses to start. It listens on BRAAS_HOST's
address (127.0.0.1 when empty), serves one client at a time, and lets a client in only after the mutual
handshake of protocol.py (each side proves it knows the token; the token itself never crosses the wire).
Handshakes run on threads of their own, each within HANDSHAKE_TIMEOUT, so a stranger that connects and
stays silent neither blocks the real client nor stays connected. Every message after it is authenticated.
Then the BlenderPhi loop: per request one more pass of the next N samples, averaged with the earlier
passes, so the image refines while the view stays (k passes give exactly one pass of k*N samples); a
changed view (bytes, ignoring `frame`) starts over.

Scripts sent by the client are never executed or applied (text from the network would be code
execution); a new one only restarts the accumulation, as BlenderPhi does. `frame` is ignored, as
BlenderPhi does: the scene stays at the frame it was opened at.

It is installed on the cluster with core/protocol.py beside it (the wire rules the client uses too):
standard library, bpy and numpy only.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import queue
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # protocol.py is installed beside this file
from protocol import (  # noqa: E402
    HANDSHAKE_MAX_TOKEN,
    HANDSHAKE_TIMEOUT,
    STATE_FORMAT,
    VIEW_FORMAT,
    VIEW_SIZE,
    Channel,
    ProtocolError,
    server_handshake,
    token_key,
)

bpy: Any = None  # imported by main(): the pure parts of this file are tested without Blender

IO_TIMEOUT = 60.0  # once a message has started; between frames a client may be idle for as long as it likes
MAX_SIDE = 16384
MAX_SCRIPT = 16 << 20
MAX_PENDING = 32  # handshakes under way at once; more strangers are turned away at the door
HALF_MAX = 65504.0
SENSOR_MM = 36.0
MIN_LENS_MM = 1.0  # Blender's limit
MIN_CLIP = 1e-3
CAMERA_NAME = "braas_hpc_view"
SAMPLE_SEQUENCE = 1 << 24  # Cycles' largest sample count: the sequence the passes walk along
DEVICES = ("CPU", "CUDA", "OPTIX", "HIP", "ONEAPI")


def log(message: str) -> None:
    print(f"braas-render-server: {message}", file=sys.stderr, flush=True)


class Stop(BaseException):
    """SIGTERM: unwinds through every handler to main(), which exits 0."""


class BadRequest(Exception):
    """The client sent something we cannot render: its session ends."""


class SetupError(Exception):
    """The server cannot start (device, address): exit 3."""


def check_token(token: str) -> str | None:
    """Why this token cannot be used, or None."""
    if not token:
        return "BRAAS_TOKEN is not set: refusing to serve without a session token (start me through " \
               "`braas-hpc interactive run`, which sets it)"
    if not (16 <= len(token) <= HANDSHAKE_MAX_TOKEN and token.isascii() and token.isalnum()):
        return "BRAAS_TOKEN must be 16 to 128 letters or digits"
    return None


# --------------------------------------------------------------------------------------------
# Camera mapping (pure numbers)


class CameraSetup(NamedTuple):  # not a dataclass: those need the module in sys.modules, which -P may not give
    """A Blender camera that shows what the request asks for."""

    orthographic: bool
    sensor_fit: str  # VERTICAL when the height is the shorter side, else HORIZONTAL
    lens_mm: float  # for a SENSOR_MM sensor along the fitted (shorter) side
    ortho_scale: float  # extent of the shorter side
    clip_start: float
    clip_end: float
    matrix_world: tuple[tuple[float, ...], ...]  # 4x4 rows, rotation without scale


def _normalized(v: Sequence[float]) -> tuple[float, float, float]:
    length = math.sqrt(sum(c * c for c in v))
    if not length > 1e-12:
        raise BadRequest("degenerate camera matrix")
    return (v[0] / length, v[1] / length, v[2] / length)


def rotation_axes(matrix: Sequence[float]) -> tuple[tuple[float, float, float], ...]:
    """The camera's x, y, z axes (columns of the row-major 3x4), scale and shear removed."""
    x = _normalized((matrix[0], matrix[4], matrix[8]))
    y_raw = (matrix[1], matrix[5], matrix[9])
    dot = sum(a * b for a, b in zip(x, y_raw, strict=True))
    y = _normalized(tuple(b - dot * a for a, b in zip(x, y_raw, strict=True)))
    z = (x[1] * y[2] - x[2] * y[1], x[2] * y[0] - x[0] * y[2], x[0] * y[1] - x[1] * y[0])
    return x, y, z


def camera_setup(width: int, height: int, matrix: Sequence[float], lens: float, clip_start: float, clip_end: float,
                 orthographic: bool) -> CameraSetup:
    """Map the request's camera (lens = FOV in radians across the shorter side, or that side's extent in
    ortho) onto a Blender camera: the fitted sensor side is the shorter image side."""
    if not all(math.isfinite(v) for v in (*matrix, lens, clip_start, clip_end)):
        raise BadRequest("camera values are not finite")
    x, y, z = rotation_axes(matrix)
    fit = "VERTICAL" if width >= height else "HORIZONTAL"
    back = 0.0
    if orthographic:
        # The viewport's ortho clip range starts behind the eye (-d/2): a Blender camera cannot clip
        # there, so step back along the view axis (invisible in ortho) until the near plane is in front.
        back = max(0.0, MIN_CLIP - clip_start)
        lens_mm, ortho_scale = 50.0, max(lens, 1e-6)
    else:
        fov = min(max(lens, 1e-6), math.pi - 1e-6)
        lens_mm, ortho_scale = max(MIN_LENS_MM, 0.5 * SENSOR_MM / math.tan(fov / 2)), 1.0
    near = max(clip_start + back, 1e-6)
    far = max(clip_end + back, near * 1.0001)
    loc = [matrix[3] + back * z[0], matrix[7] + back * z[1], matrix[11] + back * z[2]]
    rows = tuple((x[i], y[i], z[i], loc[i]) for i in range(3)) + ((0.0, 0.0, 0.0, 1.0),)
    return CameraSetup(orthographic, fit, lens_mm, ortho_scale, near, far, rows)


def setup_from_request(raw: bytes) -> tuple[int, int, CameraSetup]:
    v = struct.unpack(VIEW_FORMAT, raw)
    width, height = v[0], v[1]
    if width > MAX_SIDE or height > MAX_SIDE:
        raise BadRequest(f"{width}x{height} is larger than {MAX_SIDE} pixels a side")
    return width, height, camera_setup(width, height, v[4:16], v[16], v[17], v[18], v[30] == 1)


def to_half_bytes(rgba: np.ndarray) -> bytes:
    """float32 RGBA -> the wire's half RGBA: non-negative and within the half range, as Cycles' display does."""
    clean = np.nan_to_num(rgba, nan=0.0, posinf=HALF_MAX, neginf=0.0)
    return np.clip(clean, 0.0, HALF_MAX).astype("<f2").tobytes()


# --------------------------------------------------------------------------------------------
# Cycles through bpy


def enable_device(scene: Any, device: str) -> None:
    scene.cycles.device = "CPU" if device == "CPU" else "GPU"
    if device == "CPU":
        return
    addon = bpy.context.preferences.addons.get("cycles")
    if addon is None:
        raise SetupError("the Cycles add-on is not available in this Blender")
    prefs = addon.preferences
    try:
        prefs.compute_device_type = device
    except TypeError as err:
        raise SetupError(f"this Blender has no {device} support ({err})") from None
    prefs.refresh_devices()
    found = [d for d in prefs.devices if d.type == device]
    if not found:
        raise SetupError(f"no {device} device found on this node (is the driver loaded, was a GPU allocated?)")
    for d in prefs.devices:
        d.use = d.type == device
    log(f"using {', '.join(d.name for d in found)}")


class CyclesRenderer:
    """The scene with our own camera, rendering passes of N samples and keeping their running mean."""

    def __init__(self, scene: Any, device: str, samples_per_step: int, workdir: str) -> None:
        self.scene = scene
        self.samples_per_step = samples_per_step
        self.path = os.path.join(workdir, "pass.exr")
        data = bpy.data.cameras.new(CAMERA_NAME)
        self.camera = bpy.data.objects.new(CAMERA_NAME, data)
        scene.collection.objects.link(self.camera)
        scene.camera = self.camera
        render = scene.render
        render.engine = "CYCLES"
        enable_device(scene, device)
        cycles = scene.cycles
        # Each pass renders the next N samples of one long sequence (Cycles' sample subsets, made for
        # distributed rendering): the mean of k passes is bit for bit one pass of k*N samples. A new seed
        # per pass does not work: at 1 sample a pass, Cycles 4.5 renders the same image for every seed.
        cycles.use_sample_subset = True
        cycles.samples = SAMPLE_SEQUENCE
        cycles.sample_subset_length = samples_per_step
        cycles.use_layer_samples = "IGNORE"  # a view layer's own sample count would cut the sequence short
        cycles.use_adaptive_sampling = False
        cycles.use_denoising = False
        cycles.use_animated_seed = False
        cycles.time_limit = 0.0
        render.use_persistent_data = True  # keep Cycles' scene between passes: only the camera changes
        render.resolution_percentage = 100
        render.pixel_aspect_x = render.pixel_aspect_y = 1.0
        render.use_border = False
        render.use_motion_blur = False
        render.use_multiview = False
        render.use_compositing = False  # the raw render, as in a viewport
        render.use_sequencer = False
        render.use_single_layer = True
        image = render.image_settings
        image.file_format = "OPEN_EXR"  # scene-linear, unlike 8-bit formats
        image.color_mode = "RGBA"
        image.color_depth = "32"
        image.exr_codec = "NONE"
        self.width = self.height = 0
        self.reset()

    def reset(self) -> None:
        self.mean: np.ndarray | None = None
        self.passes = 0
        self.samples = 0

    def set_view(self, width: int, height: int, setup: CameraSetup) -> None:
        from mathutils import Matrix

        render = self.scene.render
        render.resolution_x, render.resolution_y = width, height
        self.width, self.height = width, height
        cam = self.camera.data
        cam.type = "ORTHO" if setup.orthographic else "PERSP"
        cam.sensor_fit = setup.sensor_fit
        cam.sensor_width = cam.sensor_height = SENSOR_MM
        cam.shift_x = cam.shift_y = 0.0
        cam.lens = setup.lens_mm
        cam.ortho_scale = setup.ortho_scale
        cam.clip_start, cam.clip_end = setup.clip_start, setup.clip_end
        self.camera.matrix_world = Matrix(setup.matrix_world)
        self.reset()

    def step(self) -> tuple[bytes, float]:
        """One more pass; the running mean as wire pixels, and the step's duration."""
        started = time.perf_counter()
        self.scene.cycles.sample_offset = self.samples % (SAMPLE_SEQUENCE - self.samples_per_step)
        bpy.ops.render.render()
        result = next((image for image in bpy.data.images if image.type == "RENDER_RESULT"), None)
        if result is None:
            raise RuntimeError("Cycles produced no render result")
        result.save_render(filepath=self.path, scene=self.scene)
        image = bpy.data.images.load(self.path, check_existing=False)
        try:
            if tuple(image.size) != (self.width, self.height):
                raise RuntimeError(f"rendered {tuple(image.size)}, wanted {(self.width, self.height)}")
            rgba = np.empty(self.width * self.height * 4, dtype=np.float32)
            image.pixels.foreach_get(rgba)  # bottom row first, like the wire
        finally:
            bpy.data.images.remove(image)
        self.passes += 1
        self.samples += self.samples_per_step
        if self.mean is None:
            self.mean = rgba
        else:
            self.mean += (rgba - self.mean) / self.passes
        return to_half_bytes(self.mean), time.perf_counter() - started


def scene_bounds(scene: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """World-space box around every rendered mesh object's bounding box; zeros without meshes."""
    from mathutils import Vector

    lower, upper = [math.inf] * 3, [-math.inf] * 3
    for obj in scene.objects:
        if obj.type != "MESH" or obj.hide_render:
            continue
        for corner in obj.bound_box:
            point = obj.matrix_world @ Vector(corner)
            for i in range(3):
                lower[i], upper[i] = min(lower[i], point[i]), max(upper[i], point[i])
    if lower[0] == math.inf:
        return (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)
    return tuple(lower), tuple(upper)


# --------------------------------------------------------------------------------------------
# Serving


class Server:
    """One authenticated client at a time, forever, until SIGTERM. A thread accepts connections and runs
    each handshake on a thread of its own (sockets only, never bpy); the main thread renders for the
    clients that passed, in arrival order."""

    def __init__(self, token: str) -> None:
        self.token = token
        token_key(token)  # a bad token fails here, before any network
        self.listener: socket.socket | None = None
        self.renderer: CyclesRenderer | None = None
        self.stopping = False
        self.interruptible = False
        self.script_warned = False
        self.admitted: queue.Queue[tuple[socket.socket, Channel, str]] = queue.Queue()
        self.wake_r, self.wake_w = socket.socketpair()  # one byte per admitted client: select()able
        self.pending = threading.BoundedSemaphore(MAX_PENDING)

    def on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True
        if self.interruptible:  # never in the middle of a render: bpy would be left half-way
            raise Stop()

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """A blocking socket operation that SIGTERM may break."""
        if self.stopping:
            raise Stop()
        self.interruptible = True
        try:
            yield
        finally:
            self.interruptible = False

    def wait_readable(self, sock: socket.socket) -> None:
        """Wait as long as it takes, but look at the stop flag every second (a signal taken by one of
        Blender's threads does not interrupt the main thread's wait)."""
        while True:
            with self.waiting():
                ready, _, _ = select.select([sock], [], [], 1.0)
            if ready:
                return

    def accept_forever(self) -> None:
        """The door (a daemon thread): every connection gets its handshake thread, up to MAX_PENDING."""
        assert self.listener is not None
        while not self.stopping:
            try:
                conn, addr = self.listener.accept()
            except OSError:
                if self.stopping or self.listener.fileno() < 0:
                    return
                time.sleep(0.05)  # out of descriptors: let the pending ones time out
                continue
            peer = f"{addr[0]}:{addr[1]}"
            if not self.pending.acquire(blocking=False):
                log(f"refused {peer}: too many handshakes under way")
                conn.close()
                continue
            threading.Thread(target=self.admit, args=(conn, peer), name=f"braas-handshake-{peer}",
                             daemon=True).start()

    def admit(self, conn: socket.socket, peer: str) -> None:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # the handshake is lock-step too
            channel = server_handshake(conn, self.token, HANDSHAKE_TIMEOUT)
        except OSError:
            channel = None
        finally:
            self.pending.release()
        if channel is None:
            log(f"refused {peer}: no valid proof of the session token within {HANDSHAKE_TIMEOUT:g} s")
            conn.close()
            return
        self.admitted.put((conn, channel, peer))
        self.wake_w.send(b"\0")

    def serve_forever(self) -> None:
        assert self.listener is not None
        threading.Thread(target=self.accept_forever, name="braas-accept", daemon=True).start()
        while True:
            self.wait_readable(self.wake_r)
            self.wake_r.recv(1)
            conn, channel, peer = self.admitted.get_nowait()
            try:
                self.session(conn, channel, peer)
            except Exception as err:  # one client's trouble never ends the server
                log(f"session error: {type(err).__name__}: {err}")
            finally:
                conn.close()

    def session(self, conn: socket.socket, channel: Channel, peer: str) -> None:
        conn.settimeout(IO_TIMEOUT)
        keepalive(conn)
        log(f"session start: {peer}")
        reason = "ended"
        try:
            reason = self.frames(conn, channel)
        except (ConnectionError, ProtocolError) as err:
            reason = f"connection lost ({err})"
        except TimeoutError:
            reason = "client timed out mid-message"
        except BadRequest as err:
            reason = f"bad request: {err}"
        finally:
            renderer = self.renderer
            assert renderer is not None
            log(f"session end: {peer}, {reason}; the last view had {renderer.samples} samples")

    def frames(self, conn: socket.socket, channel: Channel) -> str:
        """The BlenderPhi loop; returns why it ended."""
        renderer = self.renderer
        assert renderer is not None
        renderer.reset()
        lower, upper = scene_bounds(renderer.scene)
        last_key: bytes | None = None
        last_script = b""
        while True:
            self.wait_readable(conn)  # idle between frames is fine: the client may wait for a view change
            with self.waiting():
                raw = channel.recv_acked(VIEW_SIZE)
            width, height, reset = struct.unpack_from("<3i", raw)
            if reset:  # before the size and before the script length (Q5): the rest may be garbage
                return "client said goodbye"
            if width <= 0 or height <= 0:
                return f"client asked for {width}x{height}"
            with self.waiting():
                (length,) = struct.unpack("<i", channel.recv_acked(4))
                if not 0 <= length <= MAX_SCRIPT:
                    raise BadRequest(f"script length {length}")
                script = channel.recv_acked(length) if length else b""
            key = raw[:12] + raw[16:]  # every byte but `frame` (Q6)
            changed = key != last_key
            if script and script != last_script:
                if not self.script_warned:
                    log("script ignored: this server never runs or applies scripts sent over the network")
                    self.script_warned = True
                last_script, changed = script, True
            if changed:
                renderer.set_view(*setup_from_request(raw))
                last_key = key
            pixels, duration = renderer.step()
            state = struct.pack(STATE_FORMAT, *lower, *upper, 0.0, 0.0, renderer.samples,
                                1.0 / duration if duration > 0 else 0.0)
            with self.waiting():
                channel.send_acked(pixels)  # exactly W*H*8 (Q18)
                channel.send_acked(state)


def keepalive(conn: socket.socket) -> None:
    """A client that vanished without a FIN (laptop gone) is noticed in minutes, not never."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6)):
        if hasattr(socket, name):
            conn.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def bind_address(host: str, port: int) -> tuple[int, tuple[Any, ...]]:
    """BRAAS_HOST's address (the login host reaches the node by that name), preferring a non-loopback one."""
    try:
        infos = socket.getaddrinfo(host or "127.0.0.1", port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise SetupError(f"cannot resolve BRAAS_HOST {host!r}: {err}") from None
    outside = [info for info in infos if not ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback]
    family, _, _, _, sockaddr = (outside or infos)[0]
    if host and not outside and host not in ("localhost", "127.0.0.1", "::1"):
        log(f"warning: {host} resolves to a loopback address only; the login host may not reach this server")
    return family, sockaddr


def listen(host: str, port: int) -> socket.socket:
    family, sockaddr = bind_address(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(16)
    except OSError as err:
        sock.close()
        raise SetupError(f"cannot listen on {sockaddr[0]}:{port}: {err}") from None
    return sock


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="render_server.py", description="braas-hpc interactive Cycles server")
    parser.add_argument("--device", choices=DEVICES, default="CPU")
    parser.add_argument("--samples-per-step", type=int, default=1, metavar="N")
    parser.add_argument("--verbose", action="store_true", help="keep Blender's own per-render output")
    args = parser.parse_args(argv)
    if not 1 <= args.samples_per_step <= 65536:
        parser.error("--samples-per-step must be 1 to 65536")
    return args


def silence_stdout() -> None:
    """Blender prints several lines per render to stdout: at many frames a second that fills the log."""
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    args = parse_args(argv)
    token = os.environ.get("BRAAS_TOKEN", "")
    problem = check_token(token)
    if problem:
        log(problem)
        return 2
    host = os.environ.get("BRAAS_HOST", "").strip()
    try:
        port = int(os.environ.get("BRAAS_PORT", ""))
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        log("BRAAS_PORT must be a port number (1-65535)")
        return 2
    server = Server(token)
    signal.signal(signal.SIGTERM, server.on_signal)
    signal.signal(signal.SIGINT, server.on_signal)
    global bpy
    import bpy as bpy_module

    bpy = bpy_module
    workdir = tempfile.mkdtemp(prefix="braas-render-")  # mode 0700: the passes are the user's pictures
    try:
        server.renderer = CyclesRenderer(bpy.context.scene, args.device, args.samples_per_step, workdir)
        server.listener = listen(host, port)
        address = server.listener.getsockname()
        log(f"listening on {address[0]}:{address[1]} (Cycles {args.device}, {args.samples_per_step} samples a step)")
        if not args.verbose:
            silence_stdout()
        server.serve_forever()
    except Stop:
        log("stopped")
        return 0
    except SetupError as err:
        log(f"error: {err}")
        return 3
    finally:
        if server.listener is not None:
            server.listener.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
