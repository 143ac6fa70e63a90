"""Interactive sessions on the test cluster: the node is its own network namespace (braas-node,
198.18.1.2), reachable only from the login side, so every tunnel here really crosses login -> node.

A tiny token-checking echo server, started on the node through `run`, stands in for a command's server: it
shows bytes crossing each tunnel. The real render server's refusal of a wrong token is tested against that
server itself, in test_interactive_render.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from braas_hpc.cli_json import SCHEMAS
from braas_hpc.core.transport import KeptTransport, NoPrompts, SSHTarget, Transport, make_transport
from braas_hpc.core.transport.hostkeys import host_pattern, recorded_keys
from braas_hpc_interactive.core import session
from braas_hpc_interactive.core.client import open_socket
from braas_hpc_interactive.core.records import Connection, SessionRecord
from braas_hpc_interactive.core.tunnel import Tunnel, for_session, socket_path
from tests.client_side import cluster_path
from tests.integration.conftest import no_direct
from tests.testbed import nodens
from tests.testbed.tcpproxy import running_proxy

TOKEN_ECHO = """
import hmac, os, socket, threading
token = os.environ["BRAAS_TOKEN"].encode()
server = socket.create_server(("0.0.0.0", int(os.environ["BRAAS_PORT"])))
print("listening on", os.environ["BRAAS_PORT"], flush=True)

def serve(conn):
    with conn:
        conn.settimeout(10)
        stream = conn.makefile("rb")
        line = stream.readline(200).strip()
        if not hmac.compare_digest(line, token):
            conn.sendall(b"refused\\n")
            return
        conn.sendall(b"ok\\n")
        while data := stream.read1(65536):
            conn.sendall(data)

while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


def _talk(address: tuple[str, int], token: str, payload: bytes = b"ping\n") -> bytes:
    """Greet the server through the tunnel (its socket path or 127.0.0.1 port); returns its answer line (and
    the echo, when accepted)."""
    with open_socket(*address, timeout=10) as sock:
        sock.sendall(token.encode() + b"\n" + payload)
        reader = sock.makefile("rb")
        answer = reader.readline()
        return answer + (reader.readline() if answer == b"ok\n" else b"")


def _node_processes(marker: str) -> list[str]:
    """Command lines of processes in the node's namespace that mention `marker` (a session's dir)."""
    pids = subprocess.run(["ip", "netns", "pids", nodens.NETNS], capture_output=True, text=True).stdout.split()
    found = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline or marker in environ:
            found.append(f"{pid}: {cmdline}")
    return found


def _node_listens(port: int) -> bool:
    out = subprocess.run(["nsenter", f"--net={nodens.NETNS_PATH}", "ss", "-ltnH", f"sport = :{port}"],
                         capture_output=True, text=True).stdout
    return bool(out.strip())


async def _start_with_server(preset: str = "testbed", gpu: bool = False) -> tuple[SessionRecord, Connection]:
    """A session whose command is the token-checking echo server, listening on the node."""
    record = await session.start(preset, walltime_min=10, gpu=gpu)
    try:
        await session.wait_ready(record, timeout=240)
        await session.run(record, ["python3", "-c", TOKEN_ECHO])
        conn = await session.connection(record)
        deadline = time.monotonic() + 30
        while not _node_listens(conn.port) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        return record, conn
    except BaseException:
        await session.stop(record)
        raise


@pytest.fixture(scope="module")
def first(testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SessionRecord, Connection]]:  # noqa: ANN001
    with pytest.MonkeyPatch.context() as patch:  # the module's own data dir, given back afterwards
        patch.setenv("BRAAS_HPC_DATA_DIR", str(tmp_path_factory.mktemp("interactive-data")))
        record, conn = run(_start_with_server())
        yield record, conn
        run(session.stop(record))


def test_session_start_writes_the_interactive_files(first, testbed) -> None:  # noqa: ANN001
    record, conn = first
    assert Path(record.paths.dir).parent == Path(testbed.workdir) / f"braas-hpc-{testbed.user}" / "interactive"
    directory = cluster_path(record.paths.dir)
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
    assert (directory / "hostname.txt").read_text().strip() == nodens.HOSTNAME
    assert (directory / "jobid.txt").read_text().strip() == record.job_id
    assert (directory / "blendfile").exists()
    assert "python3 -c" in (directory / "command.sh").read_text()
    assert "listening on" in (directory / "command.log").read_text()
    assert (directory / "command.err").exists()
    assert conn.host == nodens.HOSTNAME and _node_listens(conn.port)
    assert run(session.job_state(record)) == "RUNNING"


def test_connection_file_is_private(first, testbed) -> None:  # noqa: ANN001
    record, _ = first
    info = (cluster_path(record.paths.dir) / "connection.json").stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == cluster_path(testbed.workdir).stat().st_uid  # the cluster user, nobody else


def test_node_is_reachable_only_from_the_login_side(first) -> None:  # noqa: ANN001
    _, conn = first
    with socket.create_connection((nodens.NODE_ADDR, conn.port), timeout=5):
        pass  # the login side routes to the node
    probe = "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 3)"
    other = subprocess.run(["nsenter", "--net=/run/netns/braas-login", "python3", "-c", probe, nodens.NODE_ADDR,
                            str(conn.port)], capture_output=True, text=True)
    assert other.returncode != 0 and "unreachable" in other.stderr.lower()


def _proxied(testbed, tmp_path: Path, port: int) -> SSHTarget:  # noqa: ANN001
    (key_type, blob), *_ = recorded_keys(Path(testbed.known_hosts), "127.0.0.1", testbed.ssh_port)
    known = tmp_path / "known_hosts_proxy"
    known.write_text(f"{host_pattern('127.0.0.1', port)} {key_type} {base64.b64encode(blob).decode()}\n")
    return SSHTarget(host="127.0.0.1", port=port, user=testbed.user, key_files=(str(testbed.key_file),),
                     known_hosts=str(known), ssh_config="none", use_agent=False, keepalive_s=5)


@pytest.mark.parametrize("local", ["socket", "port"])
@pytest.mark.parametrize("backend", ["asyncssh", "openssh"])
def test_watchdog_reopens_a_dropped_tunnel(first, testbed, tmp_path: Path, backend: str, local: str) -> None:  # noqa: ANN001
    _, conn = first
    events: list[str] = []
    with running_proxy("127.0.0.1", testbed.ssh_port) as proxy:
        target = _proxied(testbed, tmp_path, proxy.port)

        async def work() -> tuple[bytes, int, int, float]:
            path = socket_path("watchdog") if local == "socket" else None
            tunnel = Tunnel(lambda: make_transport(backend, target), conn.host, conn.port, check_s=0.25,
                            on_event=events.append, local_path=path)
            async with tunnel:
                address = tunnel.address
                before = await asyncio.to_thread(_talk, address, conn.token)
                proxy.drop_all()
                cut = time.monotonic()
                while tunnel.stats.last_reopen_s is None and time.monotonic() - cut < 30:
                    await asyncio.sleep(0.05)
                restored = time.monotonic() - cut
                after = await asyncio.to_thread(_talk, address, conn.token)
                assert tunnel.address == address  # the same socket or port: a client just reconnects
                if path:
                    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # the re-opened socket too
                return before + after, tunnel.stats.drops, tunnel.stats.opened, restored

        answers, drops, opened, restored = run(work())
    print(f"{backend}: tunnel restored {restored:.2f} s after the cut; events: {events}")
    assert answers == b"ok\nping\n" * 2
    assert drops == 1 and opened == 2 and proxy.drops >= 1
    assert restored < 10


@pytest.mark.parametrize("backend", ["asyncssh", "paramiko", "openssh"])
def test_a_tunnel_on_the_kept_connection_is_reopened_after_a_cut(first, testbed, tmp_path: Path, keeper: Path,  # noqa: ANN001
                                                                  backend: str) -> None:
    """The tunnel's forward and terminal session held by the connection keeper (the kept connection, no
    login of its own): cut under the keeper, the watchdog sees it and the keeper opens it again."""
    _, conn = first
    with running_proxy("127.0.0.1", testbed.ssh_port) as proxy:
        target = _proxied(testbed, tmp_path, proxy.port)

        def kept() -> Transport:
            return KeptTransport(backend, target, NoPrompts(), 600.0, no_direct)

        async def work() -> tuple[bytes, int]:
            tunnel = Tunnel(kept, conn.host, conn.port, check_s=0.25, local_path=socket_path("kept"))
            async with tunnel:
                before = await asyncio.to_thread(_talk, tunnel.address, conn.token)
                proxy.drop_all()
                cut = time.monotonic()
                while tunnel.stats.last_reopen_s is None and time.monotonic() - cut < 30:
                    await asyncio.sleep(0.05)
                after = await asyncio.to_thread(_talk, tunnel.address, conn.token)
                return before + after, tunnel.stats.drops

        answers, drops = run(work())
    assert answers == b"ok\nping\n" * 2 and proxy.connections == 2
    # paramiko's forward opens its connection again by itself, so its watchdog sees no drop
    assert drops == (0 if backend == "paramiko" else 1)


@pytest.mark.parametrize("backend", ["asyncssh", "paramiko", "openssh-mux", "openssh-process"])
def test_every_backend_forwards_to_a_private_unix_socket(first, testbed, backend: str) -> None:  # noqa: ANN001
    """Each SSH back end listens on a Unix socket of mode 0600 (replacing a stale one left at the path)
    and carries connections to the node; OpenSSH both with its shared master and with an ssh per forward."""
    from braas_hpc.core.presets import load_preset
    from braas_hpc.core.transport import target_for

    _, conn = first
    path = socket_path(f"backend-{backend}")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)  # what a crashed tunnel leaves behind
    stale.close()

    async def work() -> tuple[int, bytes, bytes]:
        t = make_transport(backend.split("-")[0], target_for(load_preset("testbed")))
        if backend == "openssh-process":
            t._mux = False  # type: ignore[attr-defined]  # as on Windows: one ssh -N -L per forward
        async with t:
            forward = await t.forward(conn.host, conn.port, local_path=path)
            try:
                mode = stat.S_IMODE(os.stat(path).st_mode)
                assert forward.local_path == path and stat.S_ISSOCK(os.stat(path).st_mode)
                first_answer = await asyncio.to_thread(_talk, (path, 0), conn.token)
                second_answer = await asyncio.to_thread(_talk, (path, 0), conn.token, b"again\n")
            finally:
                await forward.close()
        return mode, first_answer, second_answer

    try:
        mode, first_answer, second_answer = run(work())
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a bare forward leaves its socket: the Tunnel removes it on close
    assert mode == 0o600
    assert first_answer == b"ok\nping\n" and second_answer == b"ok\nagain\n"



@pytest.mark.parametrize("tcp", [False, True])
def test_cli_tunnel_prints_its_private_socket(first, tcp: bool) -> None:  # noqa: ANN001
    """`braas-hpc interactive tunnel SESSION`: a private socket by default, printed for the user; with --tcp a
    127.0.0.1 port and a warning that every local user can connect; Ctrl-C closes it (the socket removed)."""
    import json
    import signal
    import sys

    from braas_hpc_interactive.core.records import save_record
    from tests.helpers import REPO

    record, conn = first
    save_record(record)  # into this test's own data directory, where the command line looks
    argv = [sys.executable, "-m", "braas_hpc.cli", "interactive", "tunnel", record.name, "--json",
            *(["--tcp"] if tcp else [])]
    # Ctrl-C on a terminal meets a command whose SIGINT is at its default, even when this test runs in a
    # background job (which starts with SIGINT ignored, and would pass that on).
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout is not None
        shown = json.loads(proc.stdout.readline() or "null")
        assert shown is not None, proc.stderr.read() if proc.stderr else ""
        jsonschema.validate(shown, SCHEMAS["interactive tunnel"])  # the documented --json contract
        address = ("127.0.0.1", shown["local_port"]) if tcp else (shown["local_path"], 0)
        mode = None if tcp else stat.S_IMODE(os.stat(shown["local_path"]).st_mode)
        answer = _talk(address, conn.token)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert answer == b"ok\nping\n"
    if tcp:
        assert shown["local_path"] is None and shown["local_port"] > 0
        assert "every user of this computer can connect" in err
    else:
        assert mode == 0o600 and shown["local_port"] == 0 and record.name in shown["local_path"]
        assert "every user" not in err and not os.path.exists(shown["local_path"])  # closed by Ctrl-C

def test_second_session_gets_another_port_and_stop_is_exact(first) -> None:  # noqa: ANN001
    record_a, conn_a = first
    record_b, conn_b = run(_start_with_server())
    try:
        assert conn_b.host == conn_a.host == nodens.HOSTNAME  # the same node
        assert conn_b.port != conn_a.port and conn_b.token != conn_a.token
        assert _node_listens(conn_a.port) and _node_listens(conn_b.port)
        assert _node_processes(record_b.paths.dir)
        result = run(session.stop(record_b))
        assert result == "stopped"
        deadline = time.monotonic() + 15
        while _node_processes(record_b.paths.dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _node_processes(record_b.paths.dir) == []  # nothing of B is left on the node
        assert not _node_listens(conn_b.port)
        assert _node_listens(conn_a.port)  # A's server was not touched
        assert run(session.exit_status(record_b)) is not None
    finally:
        run(session.stop(record_b))


def test_stop_with_keep_job_ends_the_command_only(first) -> None:  # noqa: ANN001
    record, conn = first
    assert run(session.stop(record, keep_job=True)) == "stopped"
    assert not _node_listens(conn.port)
    assert _node_processes(f"BRAAS_SESSION_DIR={record.paths.dir}") == []
    assert run(session.job_state(record)) == "RUNNING"  # the node is still held for the next run


def test_pbs_session_through_the_standin(testbed, tmp_path: Path) -> None:  # noqa: ANN001
    """PBS Pro (the stand-in over this Slurm; polaris's real directives): the holding job itself starts
    and stops the command, as PBS Pro cannot add a step to a running job."""
    from braas_hpc.core.paths import user_presets_dir
    from braas_hpc.core.presets import load_preset
    from tests.retarget import retarget, to_toml

    preset = retarget(load_preset("polaris"), load_preset("testbed"))
    (user_presets_dir() / f"{preset.name}.toml").write_text(to_toml(preset))

    async def work() -> tuple[SessionRecord, Connection, bytes, str]:
        record, conn = await _start_with_server(preset.name, gpu=True)
        try:
            async with for_session(record.preset, None, conn.host, conn.port) as tunnel:
                answer = await asyncio.to_thread(_talk, tunnel.address, conn.token)
        finally:
            stopped = await session.stop(record)
        return record, conn, answer, stopped

    record, conn, answer, stopped = run(work())
    assert record.scheduler == "pbs" and conn.host == nodens.HOSTNAME
    assert answer == b"ok\nping\n" and stopped == "stopped"
    assert (cluster_path(record.paths.dir) / "jobid.txt").read_text().strip() == record.job_id
    assert not _node_listens(conn.port)
    assert _node_processes(f"BRAAS_SESSION_DIR={record.paths.dir}") == []

