"""The built-in Cycles server in an interactive session on the test cluster, seen through the tunnel.

The scene is uploaded to the cluster, the session's job holds the node (its own network namespace),
`session.start_server` copies the server there and starts it in stock Blender (the bpy wheel's
command line), and the client talks to it through an SSH tunnel that crosses login -> node. Real
Cycles renders every frame on the node's CPU. The server's side of the token handshake is checked here,
against this real server, by a client written from the protocol's description.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import struct
import subprocess
import time
from pathlib import Path

import numpy as np

from braas_hpc.core.presets import load_preset
from braas_hpc.core.transport import transport_for
from braas_hpc_interactive.core import launch, session
from braas_hpc_interactive.core.client import Frame, RenderClient, open_socket
from braas_hpc_interactive.core.protocol import (
    ACK,
    HANDSHAKE_MAGIC,
    NONCE_SIZE,
    TAG_SIZE,
    HandshakeRefused,
    ViewRequest,
    expected_pixel_bytes,
)
from braas_hpc_interactive.core.records import Connection
from braas_hpc_interactive.core.tunnel import for_session
from tests.client_side import cluster_path
from tests.helpers import make_sample
from tests.integration.test_interactive import _node_processes
from tests.testbed import nodens


def _top_down(x: float, y: float, z: float, width: int, height: int, half_extent: float) -> ViewRequest:
    """A camera looking straight down at the sample's floor from (x, y, z)."""
    rows = (1.0, 0.0, 0.0, x, 0.0, 1.0, 0.0, y, 0.0, 0.0, 1.0, z)
    return ViewRequest(width, height, matrix=rows, lens=2 * float(np.arctan(half_extent / z)), clip_start=0.1,
                       clip_end=100.0)


def _rgba(frame: Frame) -> np.ndarray:
    return np.frombuffer(frame.pixels, "<f2").astype(np.float32).reshape(frame.height, frame.width, 4)


def _held_terminals(user: str) -> list[int]:
    """`cat` processes of the cluster user that have a controlling terminal: what a tunnel holds open so
    sshd sends small packets at once (Transport.hold_interactive)."""
    import pwd

    uid = pwd.getpwnam(user).pw_uid
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or proc.stat().st_uid != uid:
                continue
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if name == "cat" and int(fields[4]) != 0:  # tty_nr
            found.append(int(proc.name))
    return found


async def serve_builtin(record: session.SessionRecord, timeout: float = 120) -> tuple[list[str], Connection]:
    """Start the built-in server in the session and wait until it listens (its log says so); returns its
    argv and the connection file. Also used by bench/interactive_fps_bench.py."""
    argv = await session.start_server(record, launch.BUILTIN)
    conn = await session.connection(record)
    log = cluster_path(record.paths.dir) / "command.err"
    deadline = time.monotonic() + timeout
    while "listening on" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, f"the server did not start: {log.read_text()}"
        assert await session.exit_status(record) is None, f"the server exited: {log.read_text()}"
        await asyncio.sleep(0.3)
    return argv, conn


def _frames(address: tuple[str, int], token: str) -> tuple[Frame, Frame, Frame]:
    """Two frames of one view (the second refines the first), then a moved camera."""
    with RenderClient(*address, token, timeout=120) as client:
        still = _top_down(0.0, 0.0, 10.0, 96, 54, 6.0)
        return client.request(still), client.request(still), client.request(_top_down(3.0, 2.0, 6.0, 96, 54, 3.0))


def _refused(address: tuple[str, int], token: str) -> bool:
    try:
        with RenderClient(*address, token, timeout=30) as client:
            client.request(_top_down(0.0, 0.0, 10.0, 32, 18, 6.0))
    except HandshakeRefused:
        return True
    return False


def _sign(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


def _handshake_by_hand(address: tuple[str, int], secret: str, reflect: bool = False) -> tuple[bool, int, bool]:
    """The client's side of the mutual handshake written out from docs/interactive.md, by a client that does
    NOT stop when the server's proof fails its own check: it always sends a proof, HMAC-SHA256(secret,
    "client" Nc Ns), or with `reflect` the server's own proof sent back. Returns whether the server's proof
    held for `secret`, how many bytes the server sent after our proof (0: it closed), and whether they were
    the ACK tagged under the session key derived from `secret` (the server accepted that proof)."""
    key = secret.encode()
    with open_socket(*address, timeout=30) as sock:
        nonce_c = os.urandom(NONCE_SIZE)
        sock.sendall(HANDSHAKE_MAGIC + nonce_c)
        answer = b""
        while len(answer) < NONCE_SIZE + TAG_SIZE and (chunk := sock.recv(NONCE_SIZE + TAG_SIZE - len(answer))):
            answer += chunk
        nonce_s, server_proof = answer[:NONCE_SIZE], answer[NONCE_SIZE:]
        server_ok = hmac.compare_digest(server_proof, _sign(key, b"server", nonce_c, nonce_s))
        sock.sendall(server_proof if reflect else _sign(key, b"client", nonce_c, nonce_s))
        after = b""
        while len(after) < len(ACK) + TAG_SIZE and (chunk := sock.recv(len(ACK) + TAG_SIZE - len(after))):
            after += chunk
    session_key = _sign(key, b"session", nonce_c, nonce_s)  # the server's first message is tagged with it
    accepted = after == ACK + _sign(session_key, b"S", struct.pack("<QQ", 0, len(ACK)), ACK)
    return server_ok, len(after), accepted


def test_builtin_server_renders_real_cycles_through_the_tunnel(testbed, tmp_path: Path) -> None:  # noqa: ANN001
    scene = make_sample(tmp_path / "scene")
    remote_scene = f"{testbed.workdir}/interactive-scene/sample scene's.blend"  # quoting on the way

    async def work() -> dict[str, object]:
        t = transport_for(load_preset("testbed"))
        folder = str(Path(remote_scene).parent)
        await t.run(["mkdir", "-p", "--", f"{folder}/textures"])
        await t.put(scene, remote_scene)
        await t.put(scene.parent / "textures" / "checker.png", f"{folder}/textures/checker.png")  # relative path
        record = await session.start("testbed", walltime_min=10, blendfile=remote_scene)
        try:
            await session.wait_ready(record, timeout=240)
            argv, conn = await serve_builtin(record)
            before = _held_terminals(testbed.user)
            async with for_session(record.preset, None, conn.host, conn.port) as tunnel:
                address = tunnel.address
                held: list[int] = []
                for _ in range(50):  # the session's shell starts `cat` a moment after the channel opens
                    held = [pid for pid in _held_terminals(testbed.user) if pid not in before]
                    if held:
                        break
                    await asyncio.sleep(0.1)
                log = cluster_path(record.paths.dir) / "command.err"
                refusals_before = log.read_text().count("braas-render-server: refused ")
                # The server's own refusal, not only the client's: proofs made with a wrong token, and the
                # server's proof reflected back with the right one, each sent whatever the server proved.
                by_hand = {case: await asyncio.to_thread(_handshake_by_hand, address, *args) for case, args in (
                    ("wrong token", ("0" * 48,)), ("one character off", (conn.token[:-1] + "x",)),
                    ("reflected proof", (conn.token, True)), ("right token", (conn.token,)))}
                refusals = log.read_text().count("braas-render-server: refused ") - refusals_before
                refused = await asyncio.to_thread(_refused, address, conn.token[:-1] + "x")
                frames = await asyncio.to_thread(_frames, address, conn.token)
            await asyncio.sleep(1)
            released = [pid for pid in held if pid in _held_terminals(testbed.user)]
            stopped = await session.stop(record)
        except BaseException:
            await session.stop(record)
            raise
        return {"record": record, "conn": conn, "argv": argv, "refused": refused, "frames": frames,
                "stopped": stopped, "held": held, "released": released, "by_hand": by_hand, "refusals": refusals}

    got = asyncio.run(work())
    record, conn, frames = got["record"], got["conn"], got["frames"]
    assert conn.host == nodens.HOSTNAME  # served from the node, reached through the login host
    assert got["argv"][:2] == [load_preset("testbed").blender, "-b"] and "--device" in got["argv"]
    # The server closed on each wrong proof without a byte, and logged each; the right proof got its ACK.
    assert got["by_hand"] == {"wrong token": (False, 0, False), "one character off": (False, 0, False),
                              "reflected proof": (True, 0, False), "right token": (True, len(ACK) + TAG_SIZE, True)}
    assert got["refusals"] == 3
    assert got["refused"] is True  # and the real client refuses a server that cannot prove its token
    assert len(got["held"]) == 1 and got["released"] == []  # the tunnel's terminal session, closed with it
    first, second, moved = frames
    assert [f.state.samples for f in frames] == [1, 2, 1]  # refines while still, starts over when moved
    assert all(len(f.pixels) == expected_pixel_bytes(96, 54) for f in frames)
    image = _rgba(second)
    assert np.isfinite(image).all() and image[..., :3].max() > 0.2  # lit, not blank
    reds = ((image[..., 0] > 0.5) & (image[..., 1] < 0.2)).sum()
    greens = ((image[..., 1] > 0.4) & (image[..., 0] < 0.2)).sum()
    assert reds > 50 and greens > 50, (reds, greens)  # the sample floor's checker texture, rendered by Cycles
    assert not np.array_equal(_rgba(first), image)  # the second pass refined the first
    assert not np.array_equal(_rgba(moved), image)  # a camera change renders a new view
    assert got["stopped"] == "stopped"
    deadline = time.monotonic() + 15
    while _node_processes(f"BRAAS_SESSION_DIR={record.paths.dir}") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _node_processes(f"BRAAS_SESSION_DIR={record.paths.dir}") == []  # Stop left nothing on the node
    assert (cluster_path(record.paths.dir) / "protocol.py").is_file()  # installed beside render_server.py


def test_a_local_scene_is_packed_and_uploaded_for_the_session(testbed, tmp_path: Path) -> None:  # noqa: ANN001
    """`start(scene=...)`, what the panel's Start Session does with the open file: packed (the external
    texture goes inside), sent through the store, and rendered on the node with its texture."""
    scene = make_sample(tmp_path / "scene")

    async def work() -> tuple[session.SessionRecord, str, Frame]:
        record = await session.start("testbed", walltime_min=10, scene=scene)
        try:
            await session.wait_ready(record, timeout=240)
            blendfile = await session.blendfile_of(record)
            _, conn = await serve_builtin(record)
            async with for_session(record.preset, None, conn.host, conn.port) as tunnel:
                frame = await asyncio.to_thread(_frames, tunnel.address, conn.token)
        finally:
            await session.stop(record)
        return record, blendfile, frame[1]

    record, blendfile, frame = asyncio.run(work())
    assert blendfile == f"{record.paths.dir}/in/scene.blend"
    uploaded = cluster_path(blendfile)
    assert uploaded.stat().st_nlink >= 2  # a hard link into the store: sent once, kept by gc while here
    image = _rgba(frame)
    reds = ((image[..., 0] > 0.5) & (image[..., 1] < 0.2)).sum()
    greens = ((image[..., 1] > 0.4) & (image[..., 0] < 0.2)).sum()
    assert reds > 50 and greens > 50, (reds, greens)  # the texture travelled inside the packed scene


STRANGER_ON_NODE = r"""
import json, os, socket, sys
host, port, session_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
result = {}
try:
    open(os.path.join(session_dir, "connection.json")).read()
    result["connection_file"] = "read"
except OSError as err:
    result["connection_file"] = type(err).__name__
tokens = 0
for pid in filter(str.isdigit, os.listdir("/proc")):  # the server's environment holds BRAAS_TOKEN
    try:
        tokens += b"BRAAS_TOKEN=" in open(f"/proc/{pid}/environ", "rb").read()
    except OSError:
        pass
result["environments_with_a_token"] = tokens

def drain(sock):
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except OSError:
        pass
    return got

idle = socket.create_connection((host, port), timeout=60)  # says nothing
print("connected", idle.getsockname()[1], flush=True)
sys.stdin.readline()  # the owner renders meanwhile
request = bytes(124)
guess = socket.create_connection((host, port), timeout=30)  # the old way: a token in clear, then a request
guess.sendall(b"BRAAS-HPC-RENDER/1 " + b"0" * 48 + b"\n" + request + bytes(4))
result["old_handshake_answer"] = len(drain(guess))
forged = socket.create_connection((host, port), timeout=30)  # a hello, then a made-up proof and a request
forged.sendall(b"BRAAS-HPC-RENDER/2 " + os.urandom(32))
answer = b""
while len(answer) < 64:
    chunk = forged.recv(64 - len(answer))
    if not chunk:
        break
    answer += chunk
forged.sendall(os.urandom(32) + request + bytes(32))
result["forged_answer"] = [len(answer), len(drain(forged))]
result["idle_received"] = len(drain(idle))
print(json.dumps(result), flush=True)
"""


def test_another_user_on_the_node_gets_no_frame_no_command_no_token(testbed, tmp_path: Path) -> None:  # noqa: ANN001
    """A second Unix user on the compute node, where the server's port is reachable: an idle connection of
    theirs does not hold up the owner's client (served while it is connected, then dropped without a byte),
    a guessed or forged handshake gets no frame (only the server's nonce and its proof, useless without the
    token), and the token is neither in a file nor in a process environment they can read."""
    from tests.interactive_stranger import as_stranger, stranger_user

    scene = make_sample(tmp_path / "scene")

    async def work(stranger: list[subprocess.Popen[str]]) -> tuple[str, str, dict[str, object], tuple[Frame, ...]]:
        record = await session.start("testbed", walltime_min=10, scene=scene)
        try:
            await session.wait_ready(record, timeout=240)
            _, conn = await serve_builtin(record)
            async with for_session(record.preset, None, conn.host, conn.port) as tunnel:
                proc = await asyncio.to_thread(subprocess.Popen, as_stranger(
                    STRANGER_ON_NODE, nodens.NODE_ADDR, str(conn.port), record.paths.dir, netns=nodens.NETNS),
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                stranger.append(proc)
                assert proc.stdout is not None and proc.stdin is not None
                line = await asyncio.to_thread(proc.stdout.readline)
                assert line.startswith("connected"), line + proc.stderr.read()  # type: ignore[union-attr]
                frames = await asyncio.to_thread(_frames, tunnel.address, conn.token)
                proc.stdin.write("\n")
                proc.stdin.flush()
                report = json.loads(await asyncio.to_thread(proc.stdout.readline))
            log = (cluster_path(record.paths.dir) / "command.err").read_text()
        finally:
            await session.stop(record)
        return line.split()[1], log, report, frames

    with stranger_user():
        started: list[subprocess.Popen[str]] = []
        try:
            idle_port, log, report, frames = asyncio.run(work(started))
        finally:
            for proc in started:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(10)
    assert [f.state.samples for f in frames] == [1, 2, 1]  # the owner was served while the stranger sat there
    assert report == {"connection_file": "PermissionError", "environments_with_a_token": 0,
                      "old_handshake_answer": 0, "forged_answer": [64, 0], "idle_received": 0}
    idle = f"{nodens.NODE_ADDR}:{idle_port}"
    assert log.index("session start:") < log.index(f"refused {idle}")  # served first, the stranger dropped after
    assert log.count("refused ") >= 3 and log.count("session start:") == 1
